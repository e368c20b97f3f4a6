"""Transparent huge pages for the host's heap: the CLI re-executes itself once with glibc asked to use them.

Why: on the CPU, a compiled train step's temporaries are one large allocation per call (206 MB for the
main-job net at batch 32), which glibc serves from a fresh `mmap` and unmaps when XLA frees it. With 4 KiB
pages that is ≈ 50,000 page faults a step, and the step's memory-bound ops (GroupNorm, swish, the skip
concatenations, the weight-gradient transposes) walk 200 MB through a TLB that covers a few MiB. With
glibc's `glibc.malloc.hugetlb=1` tunable, malloc marks its mappings `MADV_HUGEPAGE`, the kernel backs them
with 2 MiB pages, and on the 2-core development VM the main job ran 1.13× faster (the step alone 1.13–1.26×
when each step is waited for, 1.02–1.06× dispatched back to back; benchmarks/RESULTS.md item 10). PyTorch's
CPU step gains from it too: it is a property of the machine's memory system, not of XLA.

glibc reads its tunables once, when the process starts, so they cannot be set from Python; the CLI entry
point (`ddpm_jax.main.run`) and the benchmark scripts call `reexec_with_huge_pages()` first thing, which
replaces the process (`os.execve`: same PID, same command line, same environment plus the tunable) before
anything else has run. It does nothing — and the process carries on as it is — when:

  * DDPM_JAX_HUGE_PAGES=0 is set (the opt-out), or this process is already the re-executed one;
  * GLIBC_TUNABLES already names `glibc.malloc.hugetlb` (the user's choice stands);
  * the C library is not glibc ≥ 2.35 (the first with the tunable), or the OS is not Linux;
  * the kernel's THP mode (/sys/kernel/mm/transparent_hugepage/enabled) is `never` (nothing to gain) or
    `always` (every anonymous mapping already gets huge pages), or cannot be read;
  * `sys.orig_argv` is unavailable (an embedded interpreter: the command line cannot be repeated), or
    repeating it would not rerun the caller (a driver that ran the script through runpy, a REPL, IPython
    or Jupyter);
  * the exec itself fails (then the process carries on).

The kernel's THP `defrag` setting is recorded by `status()` but not acted on: with `madvise` (the
development VM's), a fault in a huge-page region may wait for the kernel to compact memory on a
fragmented host; `DDPM_JAX_HUGE_PAGES=0` is the way out if that ever shows.

Library use (`import ddpm_jax`) never re-executes anything.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "DDPM_JAX_HUGE_PAGES"  # "0": never re-execute
_MARK = "DDPM_JAX_HUGE_PAGES_REEXECUTED"
THP_ENABLED_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_DEFRAG_PATH = "/sys/kernel/mm/transparent_hugepage/defrag"
MIN_GLIBC = (2, 35)

# The re-executed process takes the mark out of its environment (children it starts did not re-execute;
# they inherit GLIBC_TUNABLES, which alone prevents a second exec) and remembers it here.
REEXECUTED = bool(os.environ.pop(_MARK, None))


def _is_entry_program(argv: list, orig_argv: list) -> bool:
  """True when re-running `orig_argv` re-runs the program that is calling: a script (`python x.py`), a
  module (`python -m pkg.mod`), a console script, or `python -c`; False under a driver that set sys.argv
  itself (runpy from other code) and in interactive sessions (a REPL, IPython, Jupyter)."""
  if hasattr(sys, "ps1") or sys.flags.interactive or "IPython" in sys.modules or not argv:
    return False
  program = argv[0]
  if program == "-c":
    return "-c" in orig_argv
  if "-m" in orig_argv[:-1]:
    module = orig_argv[orig_argv.index("-m") + 1]
    tail = module.replace(".", os.sep)
    return program.endswith(tail + ".py") or program.endswith(os.path.join(tail, "__main__.py"))
  return any(os.path.abspath(a) == os.path.abspath(program) for a in orig_argv[1:] if not a.startswith("-"))


def thp_mode(path: str = THP_ENABLED_PATH) -> str | None:
  """The kernel's THP mode, the bracketed word of e.g. 'always [madvise] never'; None if unreadable."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, from confstr('CS_GNU_LIBC_VERSION'); None for other C libraries."""
  try:
    text = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (AttributeError, ValueError, OSError):
    return None
  name, _, version = text.partition(" ")
  parts = version.split(".")
  if name != "glibc" or len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
    return None
  return int(parts[0]), int(parts[1])


def reexec_reason(environ: dict | None = None, *, mode: str | None = None, glibc: tuple[int, int] | None = None,
                  platform: str | None = None, orig_argv: list | None = None, argv: list | None = None,
                  reexecuted: bool | None = None) -> str | None:
  """Why the process should NOT re-execute (a sentence), or None when it should. Arguments default to this
  process's own (they are parameters so that each condition can be tested)."""
  environ = os.environ if environ is None else environ
  platform = sys.platform if platform is None else platform
  if environ.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  if (REEXECUTED if reexecuted is None else reexecuted) or environ.get(_MARK):
    return "already re-executed"
  if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"
  if not platform.startswith("linux"):
    return f"not Linux ({platform})"
  glibc = glibc_version() if glibc is None else glibc
  if glibc is None or glibc < MIN_GLIBC:
    return f"glibc {glibc} has no glibc.malloc.hugetlb tunable (needs >= {MIN_GLIBC})"
  mode = thp_mode() if mode is None else mode
  if mode != "madvise":
    return f"the kernel's THP mode is {mode!r} (only 'madvise' needs glibc's help)"
  orig_argv = getattr(sys, "orig_argv", None) if orig_argv is None else orig_argv
  if not orig_argv:
    return "sys.orig_argv is unavailable"
  argv = sys.argv if argv is None else argv
  if not _is_entry_program(list(argv), list(orig_argv)):
    return "not the process's own program (a driver, or an interactive session): its command line would not rerun it"
  return None


def reexec_environment(environ: dict | None = None) -> dict:
  """The environment of the re-executed process: this one plus the tunable (appended to GLIBC_TUNABLES)."""
  env = dict(os.environ if environ is None else environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
  env[_MARK] = "1"
  return env


def reexec_with_huge_pages() -> None:
  """Replaces this process with the same command under glibc.malloc.hugetlb=1, when that helps (module doc).

  Returns only when it does nothing. Call it before any work: whatever ran before the call runs again.
  """
  if reexec_reason() is not None:
    return
  for stream in (sys.stdout, sys.stderr):
    if stream is not None:
      try:
        stream.flush()
      except (OSError, ValueError):  # a closed or broken stream: nothing to lose
        pass
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], reexec_environment())
  except OSError:  # the interpreter cannot be executed again (a sandbox, a deleted venv): carry on as is
    return


def status() -> dict:
  """What the environment record of a benchmark notes about it."""
  return {"glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "thp_mode": thp_mode(),
          "thp_defrag": thp_mode(THP_DEFRAG_PATH), "reexecuted": REEXECUTED}
