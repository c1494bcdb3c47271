"""`mailferry import-postfix [--force] [POSTFIX_DIR]`: a Postfix configuration, moved.
(mailferry's own command; Postfix has none like it.)

    mailferry [-c CONFIG_DIR] import-postfix [--force] [POSTFIX_DIR]

POSTFIX_DIR (default /etc/postfix) is only read: nothing in it is written,
renamed or touched. Into CONFIG_DIR it

1. copies main.cf, master.cf and every file a parameter or a master.cf `-o`
   names inside POSTFIX_DIR (table sources of any type: hash/btree/lmdb/cdb
   sources, regexp/pcre/cidr files, ldap/mysql/pgsql/sqlite .cf files and the
   files those name, certificates, ...), at the same relative path, with
   their owner and mode (a root-only sasl_passwd stays root-only);
2. copies the source of an indexed table kept elsewhere (hash:/etc/aliases)
   too, as CONFIG_DIR/NAME: Postfix's index stays Postfix's, and mailferry
   builds its own beside the copy;
3. rewrites every path into POSTFIX_DIR to the same path in CONFIG_DIR, and
   comments out queue_directory and data_directory when they name Postfix's
   own (a queue is never shared);
4. builds every indexed table from its source with mailferry's postmap
   (aliases with newaliases' format). Postfix's Berkeley DB files cannot be
   read: a table whose source is missing is named, with what to do;
5. prints what it did and then the report: each main.cf setting and master.cf
   `-o` override by what mailferry does with it (works / accepted without
   effect / not yet supported), the master.cf services mailferry does not
   run, then `mailferry check`'s own diagnostics, each with its file and line.

It refuses to write into a CONFIG_DIR that already holds a main.cf or
master.cf unless --force is given. Exit status: 0 imported and `check`
finds no error, 1 imported with errors to fix, 2 nothing imported.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry [-c CONFIG_DIR] import-postfix [--force] [POSTFIX_DIR]"
DEFAULT_POSTFIX_DIR = "/etc/postfix"
INDEXED = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm")
# Table types whose file is itself a configuration naming more files (certificates, a database).
CONFIG_FILE_TYPES = ("ldap", "mysql", "pgsql", "sqlite", "memcache")
ALIAS_PARAMETERS = ("alias_maps", "alias_database")
POSTFIX_OWN_DIRECTORIES = {"queue_directory": "/var/spool/postfix", "data_directory": "/var/lib/postfix"}
# `[type:[type:...]]/absolute/path` or `$config_directory/...`, up to a separator.
_REFERENCE = re.compile(r"((?:[a-z0-9_]+:)*)((?:/|\$config_directory/|\$\{config_directory\}/|"
                        r"\$\(config_directory\)/)[^\s,{}()\"']*)")


@dataclass
class Import:
    postfix_dir: str
    target: str
    reporter: Reporter
    copied: dict[str, str] = field(default_factory=dict)       # Postfix path -> our path
    moved_outside: dict[str, str] = field(default_factory=dict)  # indexed source elsewhere -> our copy
    indexed: dict[str, tuple[str, bool]] = field(default_factory=dict)  # our source -> (type, aliases?)

    # ---- finding the files
    def references(self, text: str) -> list[tuple[str, str]]:
        """(type, absolute path) of each file `text` names; type "" for a plain path."""
        found = []
        for chain, raw in _REFERENCE.findall(text):
            types = [part for part in chain.split(":") if part and part != "proxy"]
            path = re.sub(r"^\$(\{config_directory\}|\(config_directory\)|config_directory)", self.postfix_dir, raw)
            found.append((types[-1] if types else "", os.path.normpath(path)))
        return found

    def inside(self, path: str) -> bool:
        return path == self.postfix_dir or path.startswith(self.postfix_dir + "/")

    def our_path(self, path: str) -> str:
        return os.path.join(self.target, os.path.relpath(path, self.postfix_dir))

    def collect(self, name: str, text: str) -> None:
        """Copy what one setting (named `name`: alias tables are built as aliases) refers to."""
        for type_name, path in self.references(text):
            if type_name in INDEXED:
                self._indexed(type_name, path, name in ALIAS_PARAMETERS)
            elif self.inside(path) and path != self.postfix_dir:
                self._copy(path, config_file=type_name in CONFIG_FILE_TYPES)

    def _indexed(self, type_name: str, source: str, aliases: bool) -> None:
        if not os.path.isfile(source):
            index = f"{source}.db" if os.path.exists(f"{source}.db") else ""
            self.reporter.warning(
                f"{type_name}:{source}: no source file" + (f", only Postfix's index {index}" if index else "")
                + ": Postfix's Berkeley DB files cannot be read; recreate the source (postmap -s "
                f"{type_name}:{source} > {source} with Postfix's postmap), then run import-postfix again "
                "with --force")
            return
        if self.inside(source):
            ours = self._copy(source)
        else:
            ours = self.moved_outside.get(source) or self._copy_from_elsewhere(source)
        self.indexed[ours] = (type_name, aliases)

    def _copy_from_elsewhere(self, source: str) -> str:
        ours = os.path.join(self.target, os.path.basename(source))
        if ours in self.copied.values():    # two sources of one name: /etc/aliases, /etc/mail/aliases
            ours = os.path.join(self.target, os.path.basename(os.path.dirname(source)) + "-" + os.path.basename(source))
        self._copy_file(source, ours)
        self.moved_outside[source] = ours
        return ours

    def _copy(self, path: str, config_file: bool = False) -> str:
        if path in self.copied:
            return self.copied[path]
        ours = self.our_path(path)
        if os.path.isdir(path):
            shutil.copytree(path, ours, symlinks=True, dirs_exist_ok=True)
            self.copied[path] = ours
            self.reporter.info(f"copied {path}/ -> {ours}/")
            return ours
        if not os.path.exists(path):
            self.reporter.warning(f"{path}: named in the Postfix configuration, but there is no such file; "
                                  "not copied")
            return ours
        self._copy_file(path, ours)
        if config_file:
            self._copy_what_a_table_file_names(path, ours)
        return ours

    def _copy_file(self, path: str, ours: str) -> None:
        os.makedirs(os.path.dirname(ours), exist_ok=True)
        shutil.copy2(path, ours)
        status = os.stat(path)
        if os.geteuid() == 0:
            os.chown(ours, status.st_uid, status.st_gid)   # a root-only password file stays root-only
        self.copied[path] = ours
        self.reporter.info(f"copied {path} -> {ours}")

    def _copy_what_a_table_file_names(self, path: str, ours: str) -> None:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
        for _, named in self.references(text):
            if self.inside(named) and named != path and os.path.isfile(named):
                self._copy(named)
        rewritten = self.rewrite(text)
        if rewritten != text:
            with open(ours, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write(rewritten)

    # ---- rewriting
    def rewrite(self, text: str) -> str:
        for source, ours in self.moved_outside.items():
            text = re.sub(rf"(?<=:){re.escape(source)}(?![\w./-])", ours, text)
        return re.sub(rf"(?<![\w./-]){re.escape(self.postfix_dir)}(?=/|[\s,{{}}()]|$)", self.target, text,
                      flags=re.MULTILINE)

    def rewrite_main_cf(self, text: str) -> str:
        lines = []
        for line in self.rewrite(text).splitlines(keepends=True):
            name, _, value = line.partition("=")
            postfix_own = POSTFIX_OWN_DIRECTORIES.get(name.strip())
            if postfix_own and not line[:1].isspace() and value.strip().rstrip("/") == postfix_own:
                lines.append(f"# mailferry import-postfix: {name.strip()} named Postfix's own directory; "
                             "mailferry keeps its own (see docs/migration.md)\n")
                line = "#" + line
            lines.append(line)
        return "".join(lines)

    # ---- building
    def build_tables(self) -> int:
        from mailferry.tables import TableError
        from mailferry.tables.aliases import read_alias_entries
        from mailferry.tables.build import build_index
        from mailferry.tables.source import read_entries
        failed = 0
        for source, (type_name, aliases) in self.indexed.items():
            built_type = type_name if type_name in ("hash", "btree", "lmdb", "cdb") else "hash"
            try:
                report = build_index(built_type, source, True, self.reporter.warning,
                                     read_alias_entries if aliases else read_entries)
            except (TableError, OSError) as problem:
                self.reporter.error(f"{built_type}:{source}: cannot build the index: {problem}")
                failed += 1
                continue
            self.reporter.info(f"built {report.path} from {source}: {report.entries} "
                               f"{'aliases' if aliases else 'entries'}")
        return failed


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    options, rest, config_dir = parse_options(argv, "", config_dir, USAGE, reporter, ("force",))
    if len(rest) > 1:
        return reporter.fatal(f"give at most one Postfix configuration directory\n{USAGE}")
    postfix_dir = os.path.abspath(rest[0] if rest else DEFAULT_POSTFIX_DIR).rstrip("/")
    target = os.path.abspath(config_dir)
    if not os.path.isfile(os.path.join(postfix_dir, "main.cf")):
        return reporter.fatal(f"{postfix_dir}/main.cf: no such file; give the Postfix configuration directory")
    if os.path.realpath(postfix_dir) == os.path.realpath(target):
        return reporter.fatal(f"{target} is the Postfix directory itself; give another -c CONFIG_DIR")
    existing = [name for name in ("main.cf", "master.cf") if os.path.exists(os.path.join(target, name))]
    if existing and "--force" not in options:
        return reporter.fatal(f"{target} already holds {' and '.join(existing)}: refusing to overwrite a mailferry "
                              "configuration; give --force to replace it")
    os.makedirs(target, mode=0o755, exist_ok=True)
    job = Import(postfix_dir, target, reporter)
    texts = _read_and_collect(job)
    for name, text in texts.items():
        rewritten = job.rewrite_main_cf(text) if name == "main.cf" else job.rewrite(text)
        ours = os.path.join(target, name)
        with open(ours, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(rewritten)
        shutil.copymode(os.path.join(postfix_dir, name), ours)
        reporter.info(f"copied {postfix_dir}/{name} -> {ours}, paths into {postfix_dir} rewritten")
    failed = job.build_tables()
    print_report(target, reporter)
    from mailferry.cli.check import run as check
    status = check([], target, reporter)
    return 1 if failed or status else 0


def _read_and_collect(job: Import) -> dict[str, str]:
    from mailferry.config.config import load
    from mailferry.config.mastercf import read_master_cf
    texts = {}
    for name in ("main.cf", "master.cf"):
        path = os.path.join(job.postfix_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                texts[name] = handle.read()
    # Read from Postfix's directory as Postfix reads it, without writing anything there.
    config = load(job.postfix_dir)
    for setting in config.main_cf.settings.values():
        job.collect(setting.name, setting.value)
    if "master.cf" in texts:
        for service in read_master_cf(os.path.join(job.postfix_dir, "master.cf")).services:
            for name, value in service.overrides.items():
                job.collect(name, value)
            job.collect("", " ".join(service.args))   # pipe argv=/etc/postfix/script, ...
    return texts


def print_report(config_dir: str, reporter: Reporter) -> None:
    """What mailferry does with each setting of the imported configuration, by file and line."""
    from mailferry.config import parameters
    from mailferry.config.config import load
    from mailferry.config.mastercf import read_master_cf
    config = load(config_dir)
    groups: dict[str, list[str]] = {parameters.IMPLEMENTED: [], parameters.NO_EFFECT: [], parameters.NOT_YET: []}
    for setting in config.main_cf.settings.values():
        parameter = parameters.lookup(setting.name)
        if parameter is not None:
            groups[parameter.status].append(f"{setting.file}, line {setting.line}: {setting.name}")
    services_not_run = []
    master_path = os.path.join(config_dir, "master.cf")
    if os.path.isfile(master_path):
        from mailferry.config.mastercf import UNSUPPORTED
        for service in read_master_cf(master_path).services:
            for name in service.overrides:
                parameter = parameters.lookup(name)
                if parameter is not None:
                    groups[parameter.status].append(f"{master_path}, line {service.line}: "
                                                    f"{service.name} -o {name}")
            if service.support == UNSUPPORTED:
                services_not_run.append(f"{master_path}, line {service.line}: service {service.name} "
                                        f"({service.command})")
    titles = ((parameters.IMPLEMENTED, "works"), (parameters.NO_EFFECT, "accepted without effect"),
              (parameters.NOT_YET, "not yet supported (the setting has no effect; docs/parameters.md)"))
    for status, title in titles:
        print(f"{title}: {len(groups[status])}")
        for item in groups[status]:
            print(f"  {item}")
    print(f"master.cf services mailferry does not run: {len(services_not_run)}")
    for item in services_not_run:
        print(f"  {item}")
    print("mailferry check:", flush=True)
