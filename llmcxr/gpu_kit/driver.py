"""The GPU-machine side: join the bundle, install its wheels, train by priority under deadlines.

Runs from a plain copy of the project tree with the bundle folder anywhere (no git, any cwd)::

    python3 -m llmcxr.gpu_kit drive --bundle gpu_bundle --out "$OUT" [--budget 540]

Two lanes share one deadline and run side by side (the 135 M-parameter LLM leaves most of an H200
idle): lane ``llm`` trains stage 1 then stage 2, or continues a packed model folder in one phase;
lane ``image`` (when images were packed) trains the classifier, then the tokenizer with its
clinical loss, then builds the token cache with it.
Each phase is a subprocess with its own Lightning ``max_time`` and a hard timeout; its result goes
to ``$OUT`` (`OutBox`) as soon as it exists, and the logs archive is rewritten after every phase,
so a later failure or a kill still returns what was done. Standard library only: the wheels it
installs are what the training code needs.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmcxr.gpu_kit.limits import DeviceLimits
from llmcxr.gpu_kit.outbox import OutBox, OutBoxFull
from llmcxr.gpu_kit.parts import join, read_manifest

log = logging.getLogger("llmcxr.gpu_kit")

PROJECT = Path(__file__).resolve().parents[2]
KIT_FILE = "kit.json"
RUNS = "runs"
RUN_FOLDERS = {
    "llm_stage1": f"{RUNS}/stage1",
    "llm_stage2": f"{RUNS}/stage2",
    "llm_continue": f"{RUNS}/continue",
    "classifier": f"{RUNS}/classifier",
    "tokenizer": f"{RUNS}/vqgan",
}
"""Each training phase's run folder in the work folder (also its config's ``default_root_dir``):
the driver passes it and reads the phase's logs, checkpoints and exports from it."""


@dataclass(frozen=True)
class PhasePlan:
    """Time plan of one phase, in seconds."""

    train: int
    """Lightning ``max_time`` when the deadline allows it."""
    overhead: int
    """Start-up, data loading and export around training (added to the hard timeout)."""
    minimum: int = 10
    """Skip the phase when less training time than this is left."""


@dataclass
class PhaseResult:
    """What one phase did, for ``report.json``."""

    name: str
    status: str = "pending"
    seconds: float = 0.0
    max_time: int = 0
    detail: str = ""
    returned: list[str] = field(default_factory=list)


def max_time_arg(seconds: int) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a number of seconds."""
    minutes, secs = divmod(max(1, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"00:{hours:02d}:{minutes:02d}:{secs:02d}"


def run_group(command: list[str], timeout: float, **popen: Any) -> int:
    """Run `command` in its own process group; on timeout kill the whole group (data-loader
    workers, launched ranks) and raise `subprocess.TimeoutExpired`. Returns the exit status."""
    process = subprocess.Popen(command, start_new_session=True, **popen)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


class Driver:
    """One run of the kit on the GPU machine."""

    def __init__(
        self,
        bundle: Path,
        out: Path,
        work: Path,
        budget: float,
        limits: DeviceLimits | None = None,
        project: Path = PROJECT,
        lanes: tuple[str, ...] = ("llm", "image"),
        parallel: bool = True,
    ) -> None:
        self.bundle, self.work, self.project = bundle.resolve(), work.resolve(), project.resolve()
        self.outbox = OutBox(out, limits)
        self.deadline = time.monotonic() + budget
        self.started = time.monotonic()
        self.lanes, self.parallel = lanes, parallel
        self.results: dict[str, PhaseResult] = {}
        self.kit: dict = {}
        self.env: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    def receive(self) -> None:
        """Join and extract the payload, unless this warm machine already did it."""
        manifest = read_manifest(self.bundle)
        stamp = self.work / "payload.sha256"
        if stamp.is_file() and stamp.read_text() == manifest["payload_sha256"]:
            log.info("payload already extracted in %s", self.work)
        else:
            archive = join(self.bundle, self.work / "payload.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(self.work, filter="data")
            archive.unlink()
            stamp.write_text(manifest["payload_sha256"])
            log.info("payload %s extracted into %s", manifest["payload_sha256"][:12], self.work)
        self.kit = json.loads((self.work / KIT_FILE).read_text())

    def install_wheels(self) -> None:
        """Install the carried wheels into ``work/site`` (no index, no dependencies)."""
        wheels = sorted((self.work / "wheels").glob("*.whl"))
        site = self.work / "site"
        if wheels and not (site / ".installed").is_file():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
                + ["--no-compile", "--disable-pip-version-check", "--target", str(site)]
                + [str(w) for w in wheels],
                check=True,
            )
            (site / ".installed").write_text("\n".join(w.name for w in wheels))
        paths = [str(site), str(self.project), os.environ.get("PYTHONPATH", "")]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "LLMCXR_CACHE": str(self.work / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": os.environ.get(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 4) // 4))
            ),
        }
        log.info("%d wheels installed into %s", len(wheels), site)

    # ------------------------------------------------------------------ phases
    def kit_folder(self, name: str) -> str:
        """A folder the kit names (`pack._place`): in the payload or in the project."""
        source = self.kit[name]
        return str(
            self.work / source["payload"]
            if "payload" in source
            else self.project / source["project"]
        )

    def image_tokenizer(self) -> str:
        """The tokenizer the packed token cache was built with."""
        return self.kit_folder("image_tokenizer")

    def plan(self, phase: str) -> PhasePlan:
        return PhasePlan(**self.kit["budgets"][phase])

    def run_phase(self, name: str, commands: Callable[[int], list[list[str]]]) -> bool:
        """Run one phase's commands (built for the granted ``max_time``) under its deadline."""
        plan, result = self.plan(name), PhaseResult(name)
        self.results[name] = result
        left = self.deadline - time.monotonic()
        grant = int(min(plan.train, left - plan.overhead))
        if grant < plan.minimum:
            result.status, result.detail = "skipped", f"{left:.0f} s left"
            log.warning(
                "phase %s skipped: %.0f s left, it needs %d + %d",
                name,
                left,
                plan.minimum,
                plan.overhead,
            )
            return False
        result.max_time, start = grant, time.monotonic()
        log.info("phase %s: max_time %d s (%.0f s left)", name, grant, left)
        logfile = self.work / "logs" / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        try:
            with logfile.open("w") as sink:
                for command in commands(grant):
                    timeout = max(1.0, self.deadline - time.monotonic())
                    sink.write(f"$ {' '.join(command)}\n")
                    sink.flush()
                    code = run_group(
                        command,
                        timeout,
                        cwd=self.work,
                        env=self.env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                    if code != 0:
                        raise RuntimeError(f"exit status {code}")
            result.status = "done"
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
            result.status, result.detail = "failed", str(err).splitlines()[0][:200]
            tail = logfile.read_text(errors="replace").splitlines()[-15:]
            log.error(
                "phase %s failed (%s); end of %s:\n  %s",
                name,
                result.detail,
                logfile,
                "\n  ".join(tail),
            )
        result.seconds = round(time.monotonic() - start, 1)
        return result.status == "done"

    def deliver(
        self,
        phase: str,
        name: str,
        folder: Path,
        replaces: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
    ) -> None:
        """Send one phase's result folder to ``$OUT`` (a full outbox is logged, not fatal)."""
        with self._lock:
            try:
                written = self.outbox.put_folder(name, folder, replaces, exclude)
            except (OutBoxFull, OSError) as err:
                self.results[phase].detail = f"not returned: {err}"
                log.error("result %s not returned: %s", name, err)
                return
        self.results[phase].returned = [p.name for p in written]
        log.info("returned %s: %s", name, ", ".join(p.name for p in written))

    def same_tokenizer(self, model: Path) -> tuple[str, ...]:
        """``("image_tokenizer",)`` when `model` holds the kit's tokenizer byte for byte: the
        unpacking side has it already, so it stays out of ``$OUT``."""
        source, copy = Path(self.image_tokenizer()), model / "image_tokenizer"
        names = ("config.json", "model.safetensors")
        if all(
            filecmp.cmp(source / n, copy / n, shallow=False)
            for n in names
            if (source / n).is_file()
        ):
            return ("image_tokenizer",)
        return ()

    def fit(self, module: str, phase: str, grant: int, *extra: str) -> list[str]:
        """``python -m <module> fit`` with the phase's config and run folder, `extra` arguments,
        its granted ``max_time`` and the kit's overrides for it."""
        return [
            *(
                sys.executable,
                "-m",
                module,
                "fit",
                "-c",
                str(self.project / self.kit["configs"][phase]),
            ),
            f"--trainer.default_root_dir={self.work / RUN_FOLDERS[phase]}",
            *extra,
            f"--trainer.max_time={max_time_arg(grant)}",
            *self.kit.get("overrides", {}).get(phase, []),
        ]

    def llm_phase(self, phase: str, name: str, *extra: str, replaces: tuple[str, ...] = ()) -> bool:
        """One LLM training phase; its exported model goes to ``$OUT`` as `name`."""
        if not self.run_phase(phase, lambda t: [self.fit("llmcxr.train", phase, t, *extra)]):
            return False
        model = self.work / RUN_FOLDERS[phase] / "model"
        self.deliver(phase, name, model, replaces, self.same_tokenizer(model))
        return True

    def lane_llm(self) -> None:
        """Stage 1, then stage 2 continuing its adapter; each model returned when written. With
        a packed ``continue_from`` model folder, one phase continuing that model instead."""
        if "continue_from" in self.kit:
            init = f"--model.init_from={self.kit_folder('continue_from')}"
            self.llm_phase("llm_continue", "model", init)
        elif self.llm_phase(
            "llm_stage1", "stage1_model", f"--model.image_tokenizer={self.image_tokenizer()}"
        ):
            self.write_logs()
            self.llm_phase("llm_stage2", "model", replaces=("stage1_model",))
        self.write_logs()

    def lane_image(self) -> None:
        """Classifier, then the tokenizer with its clinical loss, then the token cache it makes."""
        images, runs, py = self.work / "images", self.work / RUNS, sys.executable
        listed = (
            json.loads((images / "sources.json").read_text())
            if (images / "sources.json").is_file()
            else []
        )
        if not listed:
            log.info("no labelled images were packed: lane image skipped")
            return
        sources = f"--data.sources=[{','.join(str(images / s) for s in listed)}]"
        if not self.run_phase(
            "classifier", lambda t: [self.fit("vqgan.classifier", "classifier", t, sources)]
        ):
            self.write_logs()
            return
        export = max(
            (self.work / RUN_FOLDERS["classifier"]).rglob("classifier_export"),
            key=lambda p: p.stat().st_mtime,
        )
        self.deliver("classifier", "classifier", export)
        self.write_logs()
        tokenizer_fit = (
            f"--model.init_from={self.image_tokenizer()}",
            f"--model.loss.clinical_weights={export}",
            f"--data.data={images / 'tokenizer_images.jsonl'}",
        )
        export_tokenizer = [
            py,
            "-m",
            "vqgan.export",
            str(self.work / RUN_FOLDERS["tokenizer"] / "checkpoints" / "last.ckpt"),
            str(runs / "tokenizer"),
            "--fp16",
        ]
        if not self.run_phase(
            "tokenizer",
            lambda t: [self.fit("vqgan", "tokenizer", t, *tokenizer_fit), export_tokenizer],
        ):
            self.write_logs()
            return
        self.deliver("tokenizer", "tokenizer", runs / "tokenizer")
        self.write_logs()
        cache = [
            py,
            "-m",
            "llmcxr.token_cache",
            "--dataset",
            str(images / "llm_dataset"),
            "--tokenizer",
            str(runs / "tokenizer"),
        ]
        cache += ["--cache", str(runs / "image_tokens"), "--batch-size", "256", "--devices", "1"]
        if self.run_phase("token_cache", lambda t: [cache]):
            self.deliver("token_cache", "image_tokens", runs / "image_tokens")
        self.write_logs()

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict:
        return {
            "kit": {
                k: self.kit.get(k) for k in ("profile", "created", "commit", "configs", "budgets")
            },
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "phases": {name: asdict(r) for name, r in self.results.items()},
            "returned": [p.name for p in self.outbox.files()],
        }

    def write_logs(self) -> None:
        """Rewrite ``logs.tar.gz`` in ``$OUT``: report, driver and phase logs, metrics CSVs,
        configs."""
        with self._lock:
            (self.work / "logs").mkdir(exist_ok=True)
            (self.work / "logs" / "report.json").write_text(json.dumps(self.report(), indent=2))
            staging = self.work / "logs_staging" / "logs"
            shutil.rmtree(staging.parent, ignore_errors=True)
            staging.mkdir(parents=True)
            for path in (self.work / "logs").iterdir():
                if path.is_file():
                    (staging / path.name).write_bytes(path.read_bytes()[-4_000_000:])
            runs = self.work / RUNS
            for pattern in ("*.csv", "hparams.yaml", "config.yaml"):
                for path in runs.rglob(pattern) if runs.is_dir() else ():
                    if path.stat().st_size < 8_000_000 and "model" not in path.parts:
                        target = staging / "runs" / path.relative_to(runs)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(path.read_bytes())
            try:
                self.outbox.put_folder("logs", staging)
            except (OutBoxFull, OSError) as err:
                log.error("logs not returned: %s", err)

    # ------------------------------------------------------------------ main
    def _guarded(self, lane: Callable[[], None]) -> Callable[[], None]:
        """`lane`, logging instead of raising: one lane's surprise must not stop the other."""

        def run() -> None:
            try:
                lane()
            except Exception:  # logged with its traceback; the other lane goes on
                log.exception("%s stopped", lane.__name__)

        run.__name__ = lane.__name__
        return run

    def run(self) -> int:
        """Set up, run the lanes, write the final logs; non-zero when no phase succeeded."""
        handler = logging.FileHandler(self.work / "logs" / "driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        try:
            self.receive()
            self.install_wheels()
        except Exception as err:  # noqa: BLE001 - any set-up failure must still return the logs
            log.error("set-up failed: %s", err)
            self.results["setup"] = PhaseResult("setup", "failed", detail=str(err)[:300])
            self.write_logs()
            return 2
        lanes = [self._guarded(getattr(self, f"lane_{lane}")) for lane in self.lanes]
        if self.parallel:
            threads = [threading.Thread(target=lane, name=lane.__name__) for lane in lanes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for lane in lanes:
                lane()
        self.write_logs()
        log.removeHandler(handler)
        done = [r.name for r in self.results.values() if r.status == "done"]
        log.info(
            "done: %s; returned: %s",
            ", ".join(done) or "nothing",
            ", ".join(p.name for p in self.outbox.files()),
        )
        return 0 if done else 1


def drive(
    bundle: Path,
    out: Path,
    work: Path | None = None,
    budget: float = 540.0,
    limits: DeviceLimits | None = None,
    lanes: tuple[str, ...] = ("llm", "image"),
    parallel: bool = True,
) -> int:
    """Run the kit; `work` defaults to ``<bundle>/work`` (kept while the machine stays warm)."""
    work = Path(work or bundle / "work")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    driver = Driver(bundle, out, work, budget, limits, lanes=lanes, parallel=parallel)
    return driver.run()
