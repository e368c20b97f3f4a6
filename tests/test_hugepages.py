"""The CLI's one-time re-execution onto transparent huge pages (ddpm_jax/hugepages.py): when it happens,
what the new process gets, and that it happens once and only where it helps."""

import os
import subprocess
import sys

import pytest

from ddpm_jax import hugepages

GOOD = dict(mode="madvise", glibc=(2, 36), platform="linux", orig_argv=["python", "-m", "ddpm_jax.main", "--x=1"],
            argv=[os.path.join("venv", "ddpm_jax", "main.py"), "--x=1"], reexecuted=False)


def test_reexec_only_where_it_helps():
  assert hugepages.reexec_reason({}, **GOOD) is None
  cases = [
      ({"DDPM_JAX_HUGE_PAGES": "0"}, {}, "DDPM_JAX_HUGE_PAGES=0"),
      ({"DDPM_JAX_HUGE_PAGES_REEXECUTED": "1"}, {}, "already re-executed"),
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}, "already sets glibc.malloc.hugetlb"),
      ({}, {"platform": "darwin"}, "not Linux"),
      ({}, {"glibc": (2, 34)}, "no glibc.malloc.hugetlb tunable"),
      ({}, {"mode": "always"}, "THP mode is 'always'"),
      ({}, {"mode": "never"}, "THP mode is 'never'"),
      ({}, {"orig_argv": []}, "sys.orig_argv is unavailable"),
      ({}, {"reexecuted": True}, "already re-executed"),
      # A driver that ran a script through runpy: repeating `python -c <driver>` would rerun the driver.
      ({}, {"orig_argv": ["python", "-c", "import runpy; ..."], "argv": ["bench.py"]}, "not the process's own"),
      ({}, {"orig_argv": ["python", "-m", "other.mod"]}, "not the process's own"),
  ]
  # The other ways a program starts: a script path, a console script, `python -c`.
  for orig, argv in ((["python", "bench.py", "--a"], ["bench.py", "--a"]),
                     (["/venv/bin/python", "/venv/bin/ddpm-jax", "--a"], ["/venv/bin/ddpm-jax", "--a"]),
                     (["python", "-c", "code", "--a"], ["-c", "--a"])):
    assert hugepages.reexec_reason({}, **{**GOOD, "orig_argv": orig, "argv": argv}) is None, orig
  for environ, override, reason in cases:
    got = hugepages.reexec_reason(environ, **{**GOOD, **override})
    assert got is not None and reason in got, (environ, override, got)


def test_reexec_environment_appends_the_tunable_and_marks_the_process():
  env = hugepages.reexec_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "y"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1" and env["X"] == "y"
  assert hugepages.reexec_reason(env, **GOOD) == "already re-executed"
  assert hugepages.reexec_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_thp_mode_and_glibc_version_parse(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert hugepages.thp_mode(str(path)) == "madvise"
  path.write_text("[always] madvise never\n")
  assert hugepages.thp_mode(str(path)) == "always"
  assert hugepages.thp_mode(str(tmp_path / "missing")) is None
  version = hugepages.glibc_version()
  assert version is None or (isinstance(version, tuple) and len(version) == 2 and version >= (2, 0))


_MACHINE = hugepages.reexec_reason({}, argv=["-c"], orig_argv=["python", "-c", "..."], reexecuted=False)


@pytest.mark.skipif(_MACHINE is not None, reason=f"this machine would not re-execute: {_MACHINE}")
def test_a_real_process_reexecutes_once_with_its_arguments(tmp_path):
  """A child runs `reexec_with_huge_pages()` and appends what it saw to a file: exactly two runs (before and
  after the exec), the same PID and arguments, the tunable only in the second."""
  log = tmp_path / "runs.txt"
  code = ("import os, sys; from ddpm_jax import hugepages; "
          f"open({str(log)!r}, 'a').write(repr((os.getpid(), sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), "
          "hugepages.REEXECUTED, os.environ.get('DDPM_JAX_HUGE_PAGES_REEXECUTED'))) + '\\n'); "
          "hugepages.reexec_with_huge_pages(); print('done')")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "DDPM_JAX_HUGE_PAGES", "DDPM_JAX_HUGE_PAGES_REEXECUTED")}
  proc = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], capture_output=True, text=True, env=env,
                        timeout=120, check=True)
  assert proc.stdout.strip() == "done"
  runs = [eval(line) for line in log.read_text().splitlines()]  # pylint: disable=eval-used
  assert len(runs) == 2 and runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1] == ["a", "--b=1"]
  assert runs[0][2] is None and runs[1][2] == "glibc.malloc.hugetlb=1"
  # The second run knows it was re-executed; its environment (what its children inherit) has no mark.
  assert runs[0][3] is False and runs[1][3] is True and runs[1][4] is None
  # The opt-out: one run, no tunable.
  log.unlink()
  subprocess.run([sys.executable, "-c", code], env={**env, "DDPM_JAX_HUGE_PAGES": "0"}, timeout=120, check=True,
                 capture_output=True)
  assert len(log.read_text().splitlines()) == 1


def test_the_cli_entry_reexecutes_only_as_a_process(monkeypatch):
  """`ddpm_jax.main.run()` asks for the re-execution when it is the process's entry (no argv given), and
  not when called with an argv (library and test use)."""
  from ddpm_jax import main  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(hugepages, "reexec_with_huge_pages", lambda: calls.append(1))
  monkeypatch.setattr(sys, "argv", ["ddpm-jax", "--helpshort"])
  with pytest.raises(SystemExit):
    main.run()
  assert calls == [1]
  with pytest.raises(SystemExit):
    main.run(["ddpm-jax", "--helpshort"])
  assert calls == [1]
