"""Batch captioning on a Ray cluster: one model per Ray actor, the records written by this process (the driver) alone.

Each image is written exactly once: an image is either waiting, held by one actor, or written. When an actor dies,
what it held goes back to the queue and a new actor takes its place; the image it was working on is charged one
attempt, and an image that kills ATTEMPTS actors is recorded as an error (records.DIED_ON) instead of killing more.
Resume is the records file's finished set, as for run_batch. Actors are named (NAMESPACE, ACTOR_PREFIX) so that
`ray.util.list_named_actors(all_namespaces=True)` finds them. docs/ray.md has the cluster side."""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .batch import BatchReport, check_output
from .errors import MoondreamError
from .ray_captioner import Captioner
from .records import ATTEMPTS, DIED_ON, RecordsFile, same_file_key

NAMESPACE = "moondream-cpp"
ACTOR_PREFIX = "caption-"
IN_FLIGHT = 2  # images queued per actor: the next one is there when the current one ends
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, which binds to 127.0.0.1
DEATHS_IN_A_ROW = 4  # actors of one slot that die before finishing an image: then the run gives up


class ActorBody(Captioner):
    """A Captioner whose load failure is kept for ready() and record() to report as the run's one clear message
    (instead of a dead actor and a traceback)."""

    def __init__(self, text: str, mmproj: str | None = None, **kw):
        try:
            super().__init__(text, mmproj, **kw)
            self.load_error = None
        except Exception as e:  # noqa: BLE001 - whatever stops the load stops the run, with its message
            self.md, self.load_error = None, e

    def ready(self) -> dict:
        if self.load_error:
            raise self.not_loaded()
        return {"model": self.md.name, "question": self.asked, "pid": os.getpid()}

    def record(self, path: str, where: str | None = None, data: bytes | None = None) -> dict:
        if self.load_error:
            raise self.not_loaded()
        return super().record(path, where, data)

    def not_loaded(self) -> MoondreamError:
        e = self.load_error
        kind = type(e) if isinstance(e, MoondreamError) else MoondreamError  # its exit code too
        return kind(f"the model did not load on Ray node {socket.gethostname()}: {e}")


@dataclass
class RayOptions:
    address: str | None = None  # None or "local": a new local cluster; "auto", "HOST:PORT", "ray://HOST:PORT"
    actors: int | None = None  # default: as many as the cluster's CPUs (and GPUs) hold
    actor_cpus: float = 1.0  # Ray num_cpus of each actor, also its llama.cpp threads
    actor_gpus: float = 0.0
    load_options: dict = field(default_factory=dict)  # Moondream.load keywords (n_ctx, low_ram, n_gpu_layers, ...)
    note: Callable[[str], None] | None = None  # told how many actors run, and why fewer than asked


def connect(address: str | None) -> bool:
    """Join (or start) the Ray cluster; whether this call started it (then the run shuts it down)."""
    private = address in (None, "", "local")
    if private:  # a cluster of this machine alone listens on loopback only (Ray reads this when imported)
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError as e:
        raise MoondreamError(f"Ray is not installed here ({e}): pip install 'moondream-cpp[ray]'") from None

    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING, namespace=NAMESPACE)
    if private:
        ray.init(**quiet)
        return True
    _check_answers(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise MoondreamError(f"cannot join the Ray cluster at {address}: {e}; start one with `ray start --head`, "
                             "or leave the address out to start a local one") from None
    except SystemExit:  # Ray's answer to a cluster whose GCS port opens but never answers (after about a minute)
        raise MoondreamError(f"the Ray cluster at {address} did not answer; is it the head's GCS port (6379 by "
                             "default) or its Ray Client port (ray://HOST:10001), and do the auth settings (RAY_AUTH_"
                             "MODE, the token) match the cluster's?") from None
    return False


def _check_answers(address: str) -> None:
    """A HOST:PORT that does not answer fails here in seconds (ray.init would wait a minute, then exit the process)."""
    if address == "auto":
        return  # ray.init finds the local cluster's address itself, or says it found none
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise MoondreamError(f"--ray {address}: give auto, HOST:PORT or ray://HOST:PORT (or no address for a local "
                             "cluster)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise MoondreamError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with `ray start "
                             "--head` there, or leave the address out to start a local one") from None


def fitting_actors(wanted: int | None, cpus: float, gpus: float) -> int:
    """How many actors to start: `wanted`, or as many as the cluster's totals hold, refusing what no node can hold
    (an actor that fits nowhere would wait forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        raise MoondreamError(f"no Ray node has {cpus:g} CPUs{f' and {gpus:g} GPUs' if gpus else ''} free for one "
                             "actor; lower --actor-cpus/--actor-gpus or add a bigger node")
    total = ray.cluster_resources()
    fit = int(total.get("CPU", 0) // cpus) if cpus else wanted or 1
    if gpus:
        fit = min(fit, int(total.get("GPU", 0) // gpus))
    return max(1, min(wanted or fit, fit))


class Pool:
    """The actors, each in a slot that is refilled when its actor dies."""

    def __init__(self, ray, n: int, opts: RayOptions, body_kwargs: dict):
        self.ray, self.opts, self.body_kwargs = ray, opts, body_kwargs
        self.run = secrets.token_hex(3)
        self.cls = ray.remote(ActorBody)
        self.actors: list = [None] * n
        self.starts = [0] * n  # actors started in each slot (their names count them)
        self.deaths_in_a_row = [0] * n
        for slot in range(n):
            self.start(slot)

    def start(self, slot: int) -> None:
        self.starts[slot] += 1
        name = f"{ACTOR_PREFIX}{self.run}-{slot}-{self.starts[slot]}"
        threads = max(1, int(self.opts.actor_cpus))
        self.actors[slot] = self.cls.options(name=name, namespace=NAMESPACE, num_cpus=self.opts.actor_cpus,
                                             num_gpus=self.opts.actor_gpus, max_restarts=0).remote(
            **self.body_kwargs, n_threads=threads)

    def check_ready(self) -> dict:
        """The first actor's answer to ready() once the model loaded (every actor loads the same files)."""
        try:
            return self.ray.get(self.actors[0].ready.remote())
        except self.ray.exceptions.RayActorError as e:
            raise MoondreamError(f"the first Ray actor died while loading the model: {e}") from None
        except self.ray.exceptions.RayTaskError as e:
            raise _stop(e) from None

    def replace(self, slot: int) -> None:
        """A new actor for a dead one (killed first: an actor that only looked dead must not run on unseen)."""
        self.deaths_in_a_row[slot] += 1
        if self.deaths_in_a_row[slot] >= DEATHS_IN_A_ROW:
            raise MoondreamError(f"{DEATHS_IN_A_ROW} Ray actors in a row died before finishing an image; see the "
                                 "Ray logs (out of memory?), then lower --actors or give the nodes more memory")
        try:
            self.ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.start(slot)

    def kill_all(self) -> None:
        for a in self.actors:
            if a is not None:
                self.ray.kill(a)


def run_ray_batch(sources: list[tuple[str, str]], out: Path, text: str, mmproj: str | None, *,
                  question: str | None = None, length: str = "normal", max_tokens: int | None = None,
                  resume: bool = True, retry_errors: bool = False, options: RayOptions | None = None,
                  fsync: bool = False, on_record: Callable[[dict], None] | None = None) -> BatchReport:
    """Caption (or ask `question` about) every (record path, where to read it) of `sources` on Ray actors, appending
    one record per image to `out` (the same records as run_batch's)."""
    opts = options or RayOptions()
    out = Path(out)
    check_output(out)
    t0 = time.perf_counter()
    with RecordsFile(out, fsync) as records:
        if not resume:
            records.start_afresh()
        finished = records.finished(retry_errors)
        # a URL's key is its own realpath spelling, made in this process as the finished set's is: equal URLs match
        wanted = {same_file_key(path): (path, where) for path, where in sources}
        todo = [s for k, s in wanted.items() if k not in finished.keys]
        deaths = _earlier_deaths(records, wanted, finished, retry_errors)
        todo.sort(key=lambda s: s[0] in deaths)  # last: an image that killed a run does not hold the others back
        report = BatchReport(len(wanted), len(wanted) - len(todo), 0, 0, 0.0, finished.bad_lines)
        if todo:
            files = [str(Path(f).resolve()) if f else None for f in (text, mmproj)]  # workers run elsewhere
            _run(records, todo, deaths, report, *files, question, length, max_tokens, opts, on_record)
        records.done()
    report.seconds = time.perf_counter() - t0
    return report


def _earlier_deaths(records: RecordsFile, wanted: dict, finished, retry_errors: bool) -> dict[str, int]:
    """{record path: deaths} of the image a killed earlier run (run_batch's, whose attempts the sidecar counts) was
    working on; with retry_errors it gets one more try even after ATTEMPTS deaths."""
    died = records.died_on()
    key = same_file_key(died[0]) if died else None
    if key not in wanted or key in finished.keys:
        return {}
    return {wanted[key][0]: min(died[1], ATTEMPTS - 1) if retry_errors else died[1]}


def _run(records, todo, deaths, report, text, mmproj, question, length, max_tokens, opts, on_record):
    started = connect(opts.address)  # first: it sets what Ray reads when imported
    import ray

    pool = None
    try:
        n = fitting_actors(opts.actors, opts.actor_cpus, opts.actor_gpus)
        if opts.note:
            fewer = f" (the cluster's CPUs and GPUs hold no more than {n})" if opts.actors and n < opts.actors else ""
            opts.note(f"{n} Ray actor(s) of {opts.actor_cpus:g} CPU(s){fewer}, {len(todo)} images to do")
        body = dict(text=text, mmproj=mmproj, question=question, length=length, max_tokens=max_tokens,
                    **opts.load_options)
        pool = Pool(ray, n, opts, body)
        model = pool.check_ready()
        Scheduler(ray, pool, records, report, model, on_record, deaths).run(todo)
    finally:
        if pool is not None:
            pool.kill_all()
        if started:
            ray.shutdown()


class Scheduler:
    """Hands images to actors (IN_FLIGHT each), writes each result once, and refills a dead actor's slot."""

    def __init__(self, ray, pool: Pool, records: RecordsFile, report: BatchReport, model: dict, on_record,
                 deaths: dict[str, int]):
        self.ray, self.pool, self.records, self.report = ray, pool, records, report
        self.model, self.on_record = model, on_record
        self.held: list[list] = [[] for _ in pool.actors]  # per slot, in submission order: (ref, source)
        self.slot_of: dict = {}  # ref -> slot, for every ref in held
        self.deaths = dict(deaths)  # record path -> processes that died while captioning it

    def run(self, todo: list[tuple[str, str]]) -> None:
        self.waiting = deque()
        for source in todo:
            if self.deaths.get(source[0], 0) >= ATTEMPTS:
                self.died_on(source[0])
            else:
                self.waiting.append(source)
        while self.waiting or self.slot_of:
            self.hand_out()
            refs = list(self.slot_of)
            first, _ = self.ray.wait(refs, num_returns=1)
            more, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)  # a busy cluster ends many at once
            for ref in dict.fromkeys(first + more):
                if ref in self.slot_of:  # not yet settled by its actor's death
                    self.collect(ref)

    def hand_out(self) -> None:
        for slot, actor in enumerate(self.pool.actors):
            while self.waiting and len(self.held[slot]) < IN_FLIGHT:
                path, where = self.waiting.popleft()
                ref = actor.record.remote(path, where)
                self.held[slot].append((ref, (path, where)))
                self.slot_of[ref] = slot

    def collect(self, ref) -> None:
        slot = self.slot_of[ref]
        try:
            rec = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.actor_died(slot)
            return
        except self.ray.exceptions.RayTaskError as e:
            raise _stop(e) from None
        del self.slot_of[ref]
        self.held[slot] = [(r, s) for r, s in self.held[slot] if r != ref]
        self.pool.deaths_in_a_row[slot] = 0
        self.write(rec)

    def actor_died(self, slot: int) -> None:
        """Keep what the dead actor finished, queue the rest again; the first unfinished image was running."""
        running = None
        for ref, source in self.held[slot]:
            del self.slot_of[ref]
            try:
                self.write(self.ray.get(ref, timeout=0))  # finished before the death, result not yet read
                continue
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError):
                pass
            except self.ray.exceptions.RayTaskError as e:
                raise _stop(e) from None
            if running is None:
                running = source
            else:
                self.waiting.appendleft(source)
        self.held[slot] = []
        if running is not None:
            path = running[0]
            self.deaths[path] = self.deaths.get(path, 0) + 1
            if self.deaths[path] >= ATTEMPTS:
                self.died_on(path)
            else:
                self.waiting.append(running)  # last: an image that killed an actor does not hold the others back
        self.pool.replace(slot)

    def died_on(self, path: str) -> None:
        self.write({"path": path, "question": self.model["question"], "model": self.model["model"], "error": DIED_ON})

    def write(self, rec: dict) -> None:
        self.records.append(rec)
        self.report.written += 1
        self.report.errors += "error" in rec
        if self.on_record:
            self.on_record(rec)


def _stop(e) -> MoondreamError:
    """A task's failure that is not an image's (a prompt too long, a model that did not load): the run stops with
    its message, as run_batch would."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, MoondreamError) else MoondreamError(str(e))
