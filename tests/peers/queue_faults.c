/* Storage fault injection for the reliability tests (tests/peers/queue_faults.py builds and loads it
 * with LD_PRELOAD). Off unless MAILFERRY_TEST_FAULTS names a control file; test use only.
 *
 * Control file: one line "OP COUNT ERRNO [SUFFIX]", OP = fsync (fsync, fdatasync) or write (write, pwrite,
 * pwrite64, writev). While it exists and COUNT > 0, the next COUNT calls of OP on a file whose path
 * contains "/queue.db" (the SQLite queue, its -wal and -journal) and, with SUFFIX, ends in SUFFIX
 * (e.g. "/queue.db-wal": a commit's own sync, not the master's background checkpoint) fail with
 * ERRNO, and COUNT is decremented in the file. Every injected failure appends "OP PATH" to CONTROL.hits.
 * flock(2) on the control file serialises the processes (master and smtpd workers). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static __thread int in_shim;

static int queue_file(int fd, char *path, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, "/queue.db") != NULL;
}

/* 0: go ahead; else the errno to fail with. */
static int injected(const char *op, int fd) {
    const char *control = getenv("MAILFERRY_TEST_FAULTS");
    char path[4096], line[512], name[16], suffix[256] = "";
    int count = 0, error = 0, answer = 0;
    if (control == NULL || in_shim || access(control, F_OK) != 0) return 0;
    if (!queue_file(fd, path, sizeof path)) return 0;
    in_shim = 1;
    int c = open(control, O_RDWR);
    if (c >= 0 && flock(c, LOCK_EX) == 0) {
        ssize_t n = pread(c, line, sizeof line - 1, 0);
        if (n > 0) {
            line[n] = 0;
            int fields = sscanf(line, "%15s %d %d %255s", name, &count, &error, suffix);
            size_t plen = strlen(path), slen = strlen(suffix);
            int suffix_ok = fields < 4 || (plen >= slen && strcmp(path + plen - slen, suffix) == 0);
            if (fields >= 3 && strcmp(name, op) == 0 && count > 0 && suffix_ok) {
                int len = snprintf(line, sizeof line, "%s %d %d %s\n", name, count - 1, error, suffix);
                if (ftruncate(c, 0) == 0 && pwrite(c, line, len, 0) == len) answer = error;
                char hits[4200];
                snprintf(hits, sizeof hits, "%s.hits", control);
                int h = open(hits, O_WRONLY | O_CREAT | O_APPEND, 0666);
                if (h >= 0) {
                    dprintf(h, "%s %s\n", op, path);
                    close(h);
                }
            }
        }
        flock(c, LOCK_UN);
    }
    if (c >= 0) close(c);
    in_shim = 0;
    return answer;
}

#define NEXT(type, name) static type (*next)(); if (!next) next = (type (*)())dlsym(RTLD_NEXT, name)

int fsync(int fd) {
    NEXT(int, "fsync");
    int e = injected("fsync", fd);
    if (e) { errno = e; return -1; }
    return next(fd);
}

int fdatasync(int fd) {
    NEXT(int, "fdatasync");
    int e = injected("fsync", fd);
    if (e) { errno = e; return -1; }
    return next(fd);
}

ssize_t write(int fd, const void *buffer, size_t size) {
    NEXT(ssize_t, "write");
    int e = injected("write", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buffer, size);
}

ssize_t pwrite(int fd, const void *buffer, size_t size, off_t offset) {
    NEXT(ssize_t, "pwrite");
    int e = injected("write", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buffer, size, offset);
}

ssize_t pwrite64(int fd, const void *buffer, size_t size, off_t offset) {
    NEXT(ssize_t, "pwrite64");
    int e = injected("write", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buffer, size, offset);
}

ssize_t writev(int fd, const struct iovec *vector, int count) {
    NEXT(ssize_t, "writev");
    int e = injected("write", fd);
    if (e) { errno = e; return -1; }
    return next(fd, vector, count);
}
