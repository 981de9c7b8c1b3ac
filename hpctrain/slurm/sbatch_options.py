"""Site sbatch options passed through as they are (``--sbatch KEY=VALUE``, ``slurm.sbatch:``).

Sites need options hpctrain has no flag for (``--reservation``, typed ``--gres``,
``--dependency``, ``--mail-type``, ``--licenses``, ``--nice``...). They are checked here, before
anything is queued, as strictly as the typed flags: a name sbatch 22.05 does not know, an
option hpctrain writes itself, or one that contradicts a typed flag is refused with the flag
to use. Pure: no Slurm is asked, so ``--dry-run`` checks them on a laptop too.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Mapping

from hpctrain.errors import ConfigError

# sbatch 22.05 long options that take a value ('sbatch --help' and its man page)
WITH_VALUE = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot dependency distribution error
exclude export-file extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres
gres-flags hint input job-name licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu
mincpus network nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket
open-mode output partition power priority profile qos reservation signal sockets-per-node switches thread-spec
threads-per-core time time-min tmp uid wckey wrap
""".split())
# ... that are switches (no value)
SWITCHES = frozenset("""
contiguous hold ignore-pbs kill-on-invalid-dep no-requeue overcommit oversubscribe parsable quiet reboot requeue
spread-job test-only use-min-nodes verbose wait wait-all-nodes
""".split())
# ... whose value is optional (a switch, or KEY=VALUE)
OPTIONAL_VALUE = frozenset("exclusive export get-user-env nice no-kill propagate".split())
KNOWN = WITH_VALUE | SWITCHES | OPTIONAL_VALUE

# Options hpctrain writes itself, or whose effect would break the run: never passed through.
OWNED = {
    "job-name": "hpctrain names the job after the run: use --name",
    "output": "hpctrain writes the batch log into the run dir (hpctrain logs reads it there)",
    "error": "hpctrain writes the batch log into the run dir (hpctrain logs reads it there)",
    "open-mode": "hpctrain appends to the batch log across requeues",
    "input": "the batch script reads no input",
    "signal": "use --signal and --signal-delay (the ranks must know which signal to catch)",
    "requeue": "hpctrain always submits with --requeue; choose how it restarts with --restart",
    "no-requeue": "hpctrain needs --requeue to restart after a preemption; use --max-preemptions 0 and "
                  "--max-timeouts 0 to never restart",
    "array": "sweeps make the array: use 'hpctrain sweep'",
    "begin": "hpctrain sets --begin for a retry's backoff; use --sbatch dependency=... or submit later",
    "wrap": "hpctrain writes the batch script itself",
    "parsable": "hpctrain reads sbatch's answer itself",
    "wait": "sbatch --wait would block the submission; use 'hpctrain submit --wait'",
    "test-only": "use 'hpctrain submit --dry-run' to see the script without queueing it",
    "export": "the job needs the submitting environment (its Python and venv); put 'export NAME=value' in --setup",
    "export-file": "the job needs the submitting environment; put 'export NAME=value' in --setup",
    "get-user-env": "the job needs the submitting environment; put 'export NAME=value' in --setup",
    "chdir": "relative paths of the config are resolved from the submitting directory; use absolute paths "
             "in the config instead",
    "uid": "the job runs as the submitting user",
    "gid": "the job runs as the submitting user's group",
}
# Options that a typed flag of hpctrain submit sets: refused always, with the flag to use.
TYPED = {
    "nodes": "--nodes", "ntasks-per-node": "--ntasks-per-node", "cpus-per-task": "--cpus-per-task",
    "gpus-per-node": "--gpus-per-node", "mem": "--mem", "time": "--time", "partition": "--partition",
    "account": "--account", "qos": "--qos", "constraint": "--constraint", "exclusive": "--exclusive",
    "ntasks": "--nodes and --ntasks-per-node (hpctrain asks for nodes x ranks per node)",
}
_NAME = re.compile(r"[a-z][a-z0-9-]*")


def _canonical(key: str, where: str) -> str:
    k = key.strip()
    if k.startswith("-") and not k.startswith("--") or (len(k.lstrip("-")) == 1):
        raise ConfigError(f"{where}: {key!r} is a short option; give sbatch's long name, e.g. "
                          "--sbatch reservation=NAME")
    k = k.removeprefix("--").replace("_", "-")
    if not _NAME.fullmatch(k):
        raise ConfigError(f"{where}: {key!r} is not an sbatch option name; expected e.g. reservation, gres, "
                          "dependency, mail-type")
    if k not in KNOWN:
        close = difflib.get_close_matches(k, sorted(KNOWN), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: sbatch has no option --{k}{hint}; see 'man sbatch'")
    if k in OWNED:
        raise ConfigError(f"{where}: --{k} is not passed through: {OWNED[k]}")
    if k in TYPED:
        raise ConfigError(f"{where}: --{k} has a typed flag in hpctrain; use {TYPED[k]} instead")
    return k


def _canonical_value(k: str, value: Any, where: str) -> str | None:
    if value is True or value is None:
        if k in WITH_VALUE:
            raise ConfigError(f"{where}: --{k} needs a value; write {k}=VALUE")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: --{k} got {value!r}; expected a string or number (or true for a switch)")
    if k in SWITCHES:
        raise ConfigError(f"{where}: --{k} is a switch and takes no value; write just {k!r}")
    s = str(value)
    if not s.strip() or any(c in s for c in "\n\r\0"):
        raise ConfigError(f"{where}: --{k} value {s!r} is empty or holds a newline")
    return s


def parse_cli(items: Iterable[str]) -> list[tuple[str, str | None]]:
    """``--sbatch KEY=VALUE`` / ``--sbatch SWITCH`` items as (option, value) pairs; a key twice is refused."""
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        where = f"--sbatch {item}"
        k = _canonical(key, where)
        if k in out:
            raise ConfigError(f"{where}: --{k} is given twice; keep one")
        out[k] = _canonical_value(k, raw if eq else None, where)
    return list(out.items())


def parse_mapping(options: Mapping[str, Any], where: str = "slurm.sbatch") -> list[tuple[str, str | None]]:
    """A config's ``slurm.sbatch`` mapping (``{reservation: maint, hold: true}``) as (option, value) pairs."""
    out: dict[str, str | None] = {}
    for key, value in options.items():
        w = f"{where}.{key}"
        k = _canonical(str(key), w)
        if k in out:
            raise ConfigError(f"{w}: --{k} is given twice; keep one")
        out[k] = _canonical_value(k, value, w)
    return list(out.items())


def as_items(pairs: Iterable[tuple[str, str | None]]) -> list[str]:
    """(option, value) pairs in the ``KEY=VALUE`` / ``SWITCH`` form :func:`parse_cli` reads."""
    return [k if v is None else f"{k}={v}" for k, v in pairs]


def merge(config: Iterable[tuple[str, str | None]], cli: Iterable[tuple[str, str | None]]) -> list[str]:
    """The config's options, then the command line's; a key on both is the command line's (as --set wins)."""
    out = dict(config)
    out.update(dict(cli))
    return as_items(out.items())


def check_against(pairs: Iterable[tuple[str, str | None]], *, gpus_per_node: int, mem: str | None) -> None:
    """Options that contradict what a typed flag already asks for."""
    for k, v in pairs:
        if gpus_per_node and (k in ("gpus", "gpus-per-task", "gpus-per-socket")
                              or (k == "gres" and v is not None and re.search(r"(^|,)gpu(:|,|$)", v))):
            raise ConfigError(f"--sbatch {k}={v} and --gpus-per-node {gpus_per_node} both ask for GPUs; use one "
                              "(typed GPUs: --gpus-per-node 0 --sbatch gres=gpu:TYPE:N)")
        if mem is not None and k in ("mem-per-cpu", "mem-per-gpu"):
            raise ConfigError(f"--sbatch {k}={v} and --mem {mem} both set the memory (sbatch refuses both); "
                              "use one")
