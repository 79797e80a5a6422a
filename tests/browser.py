"""The screens a user opens, in headless Chromium: `mlflow ui`, `optuna-dashboard` and `dvc plots show`.

Each dashboard runs as a real server on 127.0.0.1 (a free port, stopped by pid); each page
is rendered by Debian's Chromium (JavaScript run, `--dump-dom`), and the checks read what
rendered: the experiments, the finetune run with its ten seed runs and their metrics, the
study with its trials, one learning curve per task. With `shots`, each screen is also kept
as a PNG (README, reports/screens/).

`python tests/browser.py [--tune-trials N] OUT_DIR` makes those PNGs from the quick profile:
a fresh copy of this checkout, `python -m pipeline.profile quick && dvc repro`, a pretrain
study, then every check below.
"""
from __future__ import annotations

import argparse
import html.parser
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import optuna
from services import BIN, ROOT, Service, free_port, service_env, stop_group

from pipeline.params import load_params

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]
# dvc plots show's page loads vega from a CDN; offline, the same page with these files beside it
VEGA = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}  # the versions dvc_render's page asks for
VEGA_DIR = ROOT / ".cache" / "vega"  # `make vega` (npm pack) puts <name>-<version>/build/<name>.min.js here
PLOTS_TEMPLATE = ROOT / "tests" / "dvc_plots_offline.html"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
    return path


def render(url: str, *, shot: Path | None = None, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20000,
           timeout: float = 120) -> str:
    """The DOM after `budget_ms` of virtual time (the page's scripts run), and a screenshot to `shot`."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}"]
        dom = _chromium([*base, "--dump-dom", url], timeout)
        if shot is not None:
            shot = Path(shot).resolve()  # chromium runs in its profile directory
            shot.parent.mkdir(parents=True, exist_ok=True)
            _chromium([*base, f"--screenshot={shot}", url], timeout, cwd=profile)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot of {url}"
    return dom


def _chromium(cmd: list[str], timeout: float, cwd: str | None = None) -> str:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc.pid, timeout=5, sig=signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish {cmd[-1]} in {timeout} s") from None
    finally:
        stop_group(proc.pid, timeout=5)  # its helpers (zygote, GPU process) too
    assert proc.returncode == 0, f"chromium failed on {cmd[-1]} ({proc.returncode}):\n{err[-2000:]}"
    return out


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "noscript", "svg"}

    def __init__(self, keep_svg: bool):
        super().__init__()
        self.parts: list[str] = []
        self.depth = 0
        self.skip = self.SKIP - ({"svg"} if keep_svg else set())

    def handle_starttag(self, tag, attrs):
        if tag in self.skip:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.skip and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth and data.strip():
            self.parts.append(data.strip())


def text(dom: str, keep_svg: bool = False) -> str:
    """What the page shows as text, one space between pieces."""
    parser = _Text(keep_svg)
    parser.feed(dom)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def api(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# the three servers ---------------------------------------------------------------------------
@contextmanager
def mlflow_ui(uri: str, logs: Path):
    port = free_port()
    env = service_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner processes: a UI only
    with Service([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                 log=logs / "mlflow-ui.log", env=env) as ui:
        ui.wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"


@contextmanager
def optuna_dashboard(storage: str, cwd: Path, logs: Path):
    port = free_port()
    with Service([str(BIN / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)],
                 log=logs / "optuna-dashboard.log", cwd=cwd) as dash:
        dash.wait_http(f"http://127.0.0.1:{port}/api/studies")
        yield f"http://127.0.0.1:{port}"


def vega_files() -> dict[str, Path]:
    files = {name: VEGA_DIR / f"{name}-{version}" / "build" / f"{name}.min.js" for name, version in VEGA.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    assert not missing, f"vega's scripts are missing ({', '.join(missing)}): run `make vega`"
    return files


@contextmanager
def dvc_plots(repo: Path, logs: Path):
    """`dvc plots show` (scripts from beside the page, not a CDN), served by `python -m http.server`."""
    out = logs / "dvc_plots"
    proc = subprocess.run([str(BIN / "dvc"), "plots", "show", "--html-template", str(PLOTS_TEMPLATE), "-o", str(out)],
                          cwd=repo, env=service_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dvc plots show failed:\n{proc.stdout}\n{proc.stderr}"
    for name, path in vega_files().items():
        (out / "vega").mkdir(exist_ok=True)
        shutil.copy(path, out / "vega" / path.name)
    port = free_port()
    with Service([str(BIN / "python"), "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(out), str(port)],
                 log=logs / "http-server.log") as server:
        server.wait_http(f"http://127.0.0.1:{port}/index.html")
        yield f"http://127.0.0.1:{port}", server


# what each screen must show ------------------------------------------------------------------
def _number(s: str) -> float:
    return float(s.replace(",", ""))


def check_mlflow(base: str, tasks: list[str], shots: Path | None = None) -> dict:
    """The experiment list shows odt/<task>; each task's finetune run lists its ten seed runs; their metrics render."""
    ml = "workflowType=machine_learning"
    page = text(render(f"{base}/#/experiments?{ml}", shot=shots and shots / "mlflow-experiments.png"))
    for name in [*(f"odt/{t}" for t in tasks), "odt/report"]:
        assert name in page, f"{name} not in the MLflow experiment list: {page[:2000]}"
    found = {}
    for i, task in enumerate(tasks):
        exp = api(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.parse.quote(f'odt/{task}')}")
        exp_id = exp["experiment"]["experiment_id"]
        runs = api(f"{base}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp_id], "filter": f"tags.dvc_stage = 'finetune@{task}'", "max_results": 100})["runs"]
        parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
        assert len(parents) == 1, f"{len(parents)} finetune parent runs for {task}"
        parent = parents[0]["info"]["run_id"]
        children = sorted((r for r in runs if r["info"]["run_id"] != parent),
                          key=lambda r: int(next(p["value"] for p in r["data"]["params"] if p["key"] == "seed")))
        # the parent's page: its ten child runs by name, its metrics with their values
        shot = shots / "mlflow-runs.png" if shots and i == 0 else None
        page = text(render(f"{base}/#/experiments/{exp_id}/runs/{parent}?{ml}", shot=shot, size=(1600, 1500)))
        listed = re.search(r"Child runs (.*?) Source", page)
        assert listed, f"no child runs on the finetune run's page: {page[:3000]}"
        assert sorted(int(s) for s in re.findall(r"seed (\d+)", listed.group(1))) == list(range(len(children)))
        for m in parents[0]["data"]["metrics"]:
            shown = re.search(rf"\b{re.escape(m['key'])} (-?[\d.e+-]+)", page)
            assert shown and _number(shown.group(1)) == m["value"], f"{m['key']} {m['value']} not on the page"
        # the seed runs side by side: each one's name and its metrics
        ids = urllib.parse.quote(json.dumps([r["info"]["run_id"] for r in children]))
        page = text(render(f"{base}/#/compare-runs?runs={ids}&experiments=%5B%22{exp_id}%22%5D&{ml}",
                           size=(4200, 2400)))
        names = re.search(r"Run Name: (.*?) Start Time", page).group(1)
        assert re.findall(r"seed (\d+)", names) == [str(k) for k in range(len(children))], names
        metrics = re.search(r"Metrics Show diff only (.*?) Artifacts", page).group(1).split(" ")
        keys = [k for k in metrics if not re.fullmatch(r"-?[\d.]+(e[+-]?\d+)?", k)]
        values = [_number(v) for v in metrics[len(keys):]]
        assert len(values) == len(keys) * len(children), (keys, values)
        # the table shows the first metrics (by name) of a long list, every one of them as logged
        assert len(keys) >= 10 and keys == sorted(keys) and "best_normalized" in keys, keys
        for i, key in enumerate(keys):
            row = values[i * len(children):(i + 1) * len(children)]
            logged = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == key) for r in children]
            for shown, value in zip(row, logged):  # the table rounds to 4 significant digits
                assert abs(shown - value) <= max(1e-3 * abs(value), 1e-3), (key, row, logged)
        found[task] = {"parent": parent, "seeds": len(children)}
    return found


def js(v: float) -> str:
    """A number as JavaScript prints it (0.00005, not Python's 5e-05)."""
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    if 1e-7 <= abs(v) < 1e21:
        return format(Decimal(repr(v)), "f")
    mantissa, exp = repr(v).split("e")
    return f"{mantissa}e{'-' if exp.startswith('-') else '+'}{int(exp.lstrip('+-'))}"


def check_optuna_dashboard(base: str, storage_trials: dict[str, list], shots: Path | None = None) -> None:
    """The study list shows each study; a study's trial list shows every trial with its state, and the best one."""
    page = text(render(f"{base}/dashboard"))
    summaries = {s["study_name"]: s for s in api(f"{base}/api/studies")["study_summaries"]}
    for name in storage_trials:
        assert f"{name} Direction: MAXIMIZE" in page, f"{name} not listed: {page[:2000]}"
    for i, (name, trials) in enumerate(storage_trials.items()):
        sid = summaries[name]["study_id"]
        if shots and i == 0:
            render(f"{base}/dashboard/studies/{sid}", shot=shots / "optuna-dashboard.png", size=(1600, 1100))
        page = text(render(f"{base}/dashboard/studies/{sid}/trials"))
        assert f"{len(trials)} Trials" in page
        shown = re.findall(r"Trial (\d+) (Complete|Pruned|Fail|Running|Waiting)( Best Trial)?", page)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        best = max(complete, key=lambda t: t.value).number
        assert [(int(n), s.upper(), bool(b)) for n, s, b in shown[:len(trials)]] == [
            (t.number, t.state.name, t.number == best) for t in trials], shown
        first = trials[0]  # the page opens on the first trial: its value, intermediate values and params
        detail = page.split(f"Trial {first.number} (trial_id=", 1)[1]
        if first.value is not None:
            assert f"Value {js(first.value)}" in detail, detail[:1000]
        steps = " ".join(f"{k} {js(v)}" for k, v in sorted(first.intermediate_values.items()))
        assert f"Intermediate Values {steps}" in detail, detail[:1000]
        for k, v in first.params.items():
            assert f"{k} {js(v)}" in detail, detail[:1000]


def check_dvc_plots(base: str, server: Service, tasks: list[str], shots: Path | None = None) -> None:
    """Two vega plots per task (rendered as SVG: axis titles and line names in the DOM) and its PNG plot, loaded."""
    dom = render(f"{base}/index.html", shot=shots and shots / "dvc-plots.png", size=(1400, 1000 * len(tasks)))
    # the online curves (ODT, IQL, SAC per task) and ODT's pretraining curves (the mean and every seed)
    for kind, x, lines in (("curves", "online samples", ("odt", "iql", "sac")),
                           ("pretrain_curves", "pretraining updates", ("mean", "seed_0", "seed_9"))):
        starts = [(m.start(), m.group(1)) for m in re.finditer(rf'<div id="(reports_{kind}_[\w.-]+?_csv)"', dom)]
        assert sorted(div for _, div in starts) == sorted(f"reports_{kind}_{t}_csv" for t in tasks), starts
        rendered = [(div, dom[at:(starts[i + 1][0] if i + 1 < len(starts) else len(dom))])
                    for i, (at, div) in enumerate(starts)]
        for div, inner in rendered:
            assert re.search(r'<svg[^>]*class="marks"', inner), f"{div}: vega drew nothing"
            shown = text(inner, keep_svg=True)
            task = div[len(f"reports_{kind}_"):-len("_csv")]
            for label in (f"reports/{kind}/{task}.csv", x, "normalized return", *lines):
                assert label in shown, f"{label!r} not drawn in {div}: {shown[:500]}"
    log = server.output()
    for task in tasks:
        img = f"static/workspace_reports_plots_{task}.png"
        assert f'src="{img}"' in dom and re.search(rf'"GET /{re.escape(img)} HTTP/1\.[01]" 200', log), log[-2000:]


def check_all(repo: Path, mlflow_uri: str, tasks: list[str], studies: list[str], logs: Path,
              shots: Path | None = None) -> dict:
    storage = "sqlite:///optuna.db"
    url = f"sqlite:///{repo / 'optuna.db'}"
    trials = {name: optuna.load_study(study_name=name, storage=url).get_trials() for name in studies}
    with mlflow_ui(mlflow_uri, logs) as base:
        found = check_mlflow(base, tasks, shots)
    with optuna_dashboard(storage, repo, logs) as base:
        check_optuna_dashboard(base, trials, shots)
    with dvc_plots(repo, logs) as (base, server):
        check_dvc_plots(base, server, tasks, shots)
    return found


def main(argv: list[str] | None = None) -> int:
    """reports/screens/ from the quick profile: a fresh copy of the checkout, `dvc repro`, a study, every check."""
    from test_pipeline_e2e import copy_worktree, pipeline_env  # noqa: PLC0415 (a cycle: it imports this module)

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--tune-trials", type=int, default=10)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()

    def sh(*cmd: str, cwd: Path, env: dict[str, str]) -> str:  # no time limit: the quick profile takes minutes
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    with tempfile.TemporaryDirectory(prefix="odt-screens-") as tmp:
        repo, logs = Path(tmp) / "repo", Path(tmp) / "logs"
        copy_worktree(repo)
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = pipeline_env(uri)
        sh("git", "init", "-q", cwd=repo, env=env)
        if not (repo / ".dvc").is_dir():
            sh(str(BIN / "dvc"), "init", "-q", cwd=repo, env=env)
        sh(str(BIN / "dvc"), "config", "core.analytics", "false", cwd=repo, env=env)
        sh(sys.executable, "-m", "pipeline.profile", args.profile, cwd=repo, env=env)
        sh("git", "add", "-A", cwd=repo, env=env)
        sh("git", "commit", "-qm", args.profile, cwd=repo, env=env)
        print(sh(str(BIN / "dvc"), "repro", cwd=repo, env=env)[-2000:])

        _, plans = load_params(repo / "params.yaml")
        tasks = list(plans)
        print(sh(sys.executable, "-m", "pipeline.tune", "--task", tasks[0], "--phase", "pretrain",
                 "--n-trials", str(args.tune_trials), cwd=repo, env=env)[-1000:])
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(check_all(repo, uri, tasks, [f"{tasks[0]}-pretrain"], logs, shots=args.out)))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
