"""The benchmark suite's harness, registry, CLI and BENCHMARKS.md generator (bench/). No real
benchmark runs here: a fake one goes through the harness, and the generator is checked against
the committed BENCHMARKS.md so the file cannot go stale."""
from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import assemble as asm  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.harness import (REGISTRY, Benchmark, Registry, git_commit, read_header,  # noqa: E402
                           run_benchmark, shell, shift_headings, timed)
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.deploy.ort_bench import cpu_isa  # noqa: E402

import bench.suite  # noqa: E402,F401  (registers the real benchmarks)


def fake_registry() -> Registry:
    reg = Registry()
    reg.add(Benchmark("fake", "A fake benchmark", "prints a table",
                      shell("printf '# Its own title\\n\\n| a | b |\\n| --- | --- |\\n| 1 | {args} |\\n'",
                            defaults=("2",))))

    @reg.benchmark("fn", "A function benchmark", "returns its body")
    def fn(ctx):
        return f"args {ctx.args}, body line"
    return reg


def test_fake_benchmark_writes_header_and_body(tmp_path):
    reg = fake_registry()
    path = run_benchmark(reg["fake"], ["7"], results=tmp_path)
    text = path.read_text()
    assert path == tmp_path / "fake.md"
    lines = text.split("\n")
    assert lines[0] == "# A fake benchmark"
    h = read_header(text)
    assert set(h) == {"command", "commit", "machine", "runtimes", "date", "load average"}
    assert h["command"].startswith("`python -m bench fake 7`; ran `printf ")
    assert h["commit"] == git_commit() and re.fullmatch(r"[0-9a-f]{7,40}( \(dirty\))?", h["commit"])
    assert h["machine"] == cpu_isa()["text"]
    assert h["date"][:10] == datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert re.fullmatch(r"[\d.]+ [\d.]+ [\d.]+ before, [\d.]+ [\d.]+ [\d.]+ after", h["load average"])
    assert "torch " in h["runtimes"] and h["runtimes"].startswith("python 3.")
    # the body follows the header; its own title moved one level down, under the file's
    body = text.split("\n\n", 2)[2]
    assert body == "## Its own title\n\n| a | b |\n| --- | --- |\n| 1 | 7 |\n"
    assert text.count("\n# ") == 0  # one title
    # no args: the defaults; a function benchmark
    assert run_benchmark(reg["fake"], [], results=tmp_path).read_text().endswith("| 1 | 2 |\n")
    assert run_benchmark(reg["fn"], ["x"], results=tmp_path).read_text().endswith(
        "\n\nargs ['x'], body line\n")


def test_failing_command_and_missing_args_are_one_line_errors(tmp_path):
    reg = Registry()
    reg.add(Benchmark("bad", "Bad", "exits 3", shell("exit 3")))
    reg.add(Benchmark("needs", "Needs", "needs args", shell("echo {args}", usage="A.onnx")))
    with pytest.raises(YoloSlimError, match=r"^bad: `exit 3` exited with status 3$"):
        run_benchmark(reg["bad"], [], results=tmp_path)
    with pytest.raises(YoloSlimError, match="needs arguments, e.g. python -m bench needs A.onnx"):
        run_benchmark(reg["needs"], [], results=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no result file for a failed run


def test_registry_refuses_duplicate_and_bad_names():
    reg = fake_registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.add(Benchmark("fake", "t", "a", shell("true")))
    for name in ("list", "assemble", "Bad-Name"):
        with pytest.raises(ValueError, match="benchmark name"):
            reg.add(Benchmark(name, "t", "a", shell("true")))


def test_cli_list_unknown_and_help(capsys, tmp_path):
    reg = fake_registry()
    assert main(["list"], registry=reg, results=tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["fake  prints a table  (no result yet)", "fn    returns its body  (no result yet)"]
    assert main(["nope"], registry=reg) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown benchmark 'nope' (python -m bench list shows them)\n"
    assert main(["assemble", "--force"], registry=reg) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main([], registry=reg) == 2 and main(["--help"], registry=reg) == 0


def test_python_m_bench_list_names_every_registered_benchmark():
    r = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == list(REGISTRY) and len(names) == 20
    r = subprocess.run([sys.executable, "-m", "bench", "no_such"], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (2, "", 1)


def test_registered_benchmarks_run_scripts_that_exist():
    scripts = set()
    for b in REGISTRY.values():
        found = re.findall(r"bench/[\w/]+\.(?:py|sh)", b.run.command)
        assert found, b.name
        scripts.update(found)
    assert all((ROOT / s).is_file() for s in scripts), scripts
    assert len(scripts) == 19
    # every script in bench/ is a registered benchmark's, or called by one (the table scripts),
    # or the harness; darknet_reference.py writes the darknet parity test's reference data
    called = {s for x in scripts if x.endswith(".sh") for s in re.findall(r"bench/\w+\.py", (ROOT / x).read_text())}
    harness = {f"bench/{n}.py" for n in ("__init__", "__main__", "harness", "suite", "assemble")}
    present = {f"bench/{p.name}" for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh")}
    assert present - scripts - called - harness == {"bench/darknet_reference.py"}
    # every script a result file or research log names is there too
    texts = [p.read_text() for p in [*(ROOT / "bench/results").glob("*.md"), *(ROOT / "docs/research").glob("*.md")]]
    named = {s for t in texts for s in re.findall(r"bench/[\w/]+\.(?:py|sh)", t)}
    assert {s for s in named if not (ROOT / s).is_file()} == set()


def test_benchmarks_md_is_what_the_results_generate():
    assert asm.generate() == (ROOT / "BENCHMARKS.md").read_text()
    assert asm.assemble(check=True) == 0


def test_benchmarks_md_links_and_anchors_resolve():
    text = (ROOT / "BENCHMARKS.md").read_text()
    anchors = [asm.slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)]
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [x[1:] for x in links if x.startswith("#")]
    files = [x for x in links if not x.startswith(("#", "http"))]
    assert len(local) == 14 and all(anchors.count(x) == 1 for x in local)  # GitHub numbers repeats
    assert [f for f in files if not (ROOT / f).exists()] == []
    # every section file is in, once, in the declared order; the research logs are listed
    titles = [asm.title_of((ROOT / f"bench/results/{n}.md").read_text(), n) for n in asm.SECTIONS]
    where = [text.index(f"\n## {t}\n") for t in titles]
    assert where == sorted(where) and len(set(where)) == len(asm.SECTIONS) == 19
    assert text.count("](docs/research/") == 2 + len(list((ROOT / "docs/research").glob("*.md")))


def test_summary_numbers_come_from_the_result_files(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench/results", results)
    fast = results / "fast.md"
    fast.write_text(fast.read_text().replace("| ours | 0.695 | 0.416 | 3.68 | 2.84 |", "| ours | 0.701 | 0.416 | 3.68 | 2.99 |"))
    text = asm.generate(results=results)
    row = next(line for line in text.splitlines() if line.startswith("| How much faster"))
    assert "2.99x measured" in row and "mAP@0.5 0.701 vs the baseline's 0.636" in row
    assert text.count("2.84x") == (ROOT / "BENCHMARKS.md").read_text().count("2.84x") - 2
    fast.write_text(fast.read_text().replace("| ours |", "| mine |"))
    with pytest.raises(YoloSlimError, match=r"^summary 'How much faster is the demo's slim model\?': no match in bench/results/fast.md"):
        asm.generate(results=results)
    shutil.copy(ROOT / "bench/results/fast.md", fast)
    (results / "prune.md").unlink()
    with pytest.raises(YoloSlimError, match="prune.md: no such result"):
        asm.generate(results=results)


def test_shift_headings_leaves_code_alone():
    text = "# A\n## B\n```bash\n# a comment\n```\n#nohash\n"
    assert shift_headings(text, 1) == "## A\n### B\n```bash\n# a comment\n```\n#nohash\n"
    assert shift_headings("## A\n### B", -1) == "# A\n## B"


def test_timed_measures_one_call():
    value, wall, cpu = timed(lambda: time.sleep(0.05) or 7)
    assert value == 7 and 0.05 <= wall < 1.0 and 0 <= cpu < 0.04
    def spin() -> None:  # 50 ms of this process's CPU, however busy the machine is
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    _, wall, cpu = timed(spin)
    assert 0.05 <= cpu < 0.5 and wall >= 0.05
