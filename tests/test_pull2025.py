"""The registry and `pull` for the 2025 moondream2 family: `moondream2` is the 2025-06-21 HF checkpoint plus the
starmie-v1 tokenizer from a second hub repo, saved inside the checkpoint and converted here; each 2025 revision has
its own name; the 2024 published GGUF pair is `moondream2-2024-gguf`. Real CLI processes against the fake hub on
loopback, with a scaled-down 2025 checkpoint (tests/checkpoints2025.py)."""
import hashlib
import json
from pathlib import Path

import pytest

from checkpoints2025 import make_checkpoint_2025, make_starmie_tokenizer
from fakehub import FakeHub
from test_pull import TEXT, listed, registry as demo_registry, run

MODEL_REPO, STARMIE_REPO = "vikhyatk/moondream2", "moondream/starmie-v1"
CK_FILES = ["config.json", "model.safetensors"]  # what the bundled 06-21 entries download from the model repo
IN_CHECKPOINT = "starmie-v1/tokenizer.json"  # where the converter looks for the starmie tokenizer
IMAGE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"


@pytest.fixture(scope="session")
def ck0621(workdir) -> Path:
    """A scaled-down 06-21 checkpoint as the hub has it (its own tokenizer.json is the 2024 leftover) and, apart,
    the starmie tokenizer of the other repo."""
    ck = make_checkpoint_2025(workdir / "ck-2025-06-21-hub", revision="2025-06-21", dtype="bf16", with_starmie=False)
    assert not (ck / IN_CHECKPOINT).exists()
    make_starmie_tokenizer(workdir / "starmie-hub")
    return ck


def hub_2025(ck: Path, starmie_dir: Path | None) -> FakeHub:
    h = FakeHub()
    h.add_dir(MODEL_REPO, "2025-06-21", ck, [*CK_FILES, "tokenizer.json"])
    if starmie_dir is not None:
        h.add_dir(STARMIE_REPO, "main", starmie_dir, ["tokenizer.json"])
    return h


def gets(hub: FakeHub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET"]


def test_moondream2_is_the_newest_2025_checkpoint_plus_the_starmie_tokenizer():
    from moondream_cpp.registry import downloads, registry

    reg = registry()
    for name in ("moondream2", "moondream2-2025-06-21"):
        e = reg[name]
        assert (e["kind"], e["repo"], e["revision"], e["moondream_revision"]) == (
            "checkpoint", MODEL_REPO, "2025-06-21", "2025-06-21")
        assert [(d.repo, d.revision, d.name, d.to) for d in downloads(e)] == [
            (MODEL_REPO, "2025-06-21", "config.json", "config.json"),
            (MODEL_REPO, "2025-06-21", "model.safetensors", "model.safetensors"),
            (STARMIE_REPO, "main", "tokenizer.json", IN_CHECKPOINT)]
        assert e["default_quant"] == "q8_0"
    for rev in ("2025-01-09", "2025-03-27", "2025-04-14"):  # the GPT-2 tokenizer of the checkpoint itself
        e = reg[f"moondream2-{rev}"]
        assert (e["repo"], e["revision"], e["moondream_revision"], e["default_quant"]) == (MODEL_REPO, rev, rev, "q8_0")
        assert [(d.repo, d.name, d.to) for d in downloads(e)] == [
            (MODEL_REPO, f, f) for f in ("config.json", "model.safetensors", "tokenizer.json")]
    pair = reg["moondream2-2024-gguf"]
    assert (pair["kind"], pair["repo"], pair["revision"]) == ("gguf", MODEL_REPO, "2024-05-20")
    assert {k: f["name"] for k, f in pair["files"].items()} == {
        "text": "moondream2-text-model-f16.gguf", "mmproj": "moondream2-mmproj-f16.gguf"}
    for rev in ("2024-03-04", "2024-03-06", "2024-03-13", "2024-04-02", "2024-05-08"):  # unchanged
        assert reg[f"moondream2-{rev}"]["moondream_revision"] == rev


def test_every_bundled_entry_passes_the_checks_a_user_entry_gets(tmp_path, monkeypatch):
    from moondream_cpp.gguf_models import REGISTRY
    from moondream_cpp.registry import registry

    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(tmp_path))
    mine = {name: e for name, e in REGISTRY.items() if e["kind"] != "bundled"}
    (tmp_path / "registry.json").write_text(json.dumps(mine))
    assert {k: registry()[k] for k in mine} == mine  # read back through the user-registry checks, unrefused


def test_list_all_says_which_is_which(home):
    r = run("list", "--all", "--json", home=home, hub_url="http://127.0.0.1:9")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert {k: (rows[k]["family"], rows[k]["kind"], rows[k]["where"]) for k in (
        "moondream2", "moondream2-2025-04-14", "moondream2-2024-gguf", "moondream2-2024-05-08", "moondream1")} == {
        "moondream2": ("moondream2 2025", "HF checkpoint + starmie-v1", f"{MODEL_REPO}@2025-06-21"),
        "moondream2-2025-04-14": ("moondream2 2025", "HF checkpoint", f"{MODEL_REPO}@2025-04-14"),
        "moondream2-2024-gguf": ("moondream2 2024", "published GGUF", f"{MODEL_REPO}@2024-05-20"),
        "moondream2-2024-05-08": ("moondream2 2024", "HF checkpoint", f"{MODEL_REPO}@2024-05-08"),
        "moondream1": ("moondream1", "HF checkpoint", "vikhyatk/moondream1@f6e9da68e8f1b78b8f3ee10905d56826db7a5802")}
    r = run("list", "--all", home=home, hub_url="http://127.0.0.1:9", extra={"COLUMNS": "200"})
    assert r.returncode == 0 and "HF checkpoint + starmie-v1" in r.stdout and "moondream2 2024" in r.stdout


STARMIE = {"repo": STARMIE_REPO, "revision": "main", "name": "tokenizer.json", "to": IN_CHECKPOINT}


def entry_with(**extra):
    return {"kind": "checkpoint", "repo": "test/ck", "revision": "v1", "moondream_revision": "2025-06-21",
            "files": CK_FILES, "extra_files": [{**STARMIE, **extra}]}


@pytest.mark.parametrize("entry,problem", [
    (entry_with(to="../../x"), "has extra_files[0].to '../../x'; it must be a relative path inside the downloaded "
                               "checkpoint, without '.' or '..' parts"),
    (entry_with(to="/tmp/x"), "has extra_files[0].to '/tmp/x'; it must be a relative path inside the downloaded"),
    (entry_with(to="starmie-v1/../../x"), "has extra_files[0].to 'starmie-v1/../../x'; it must be a relative path"),
    (entry_with(to="a\\..\\x"), "has extra_files[0].to 'a\\\\..\\\\x'; it must be a relative path"),
    (entry_with(name="../tokenizer.json"), "has extra_files[0].name '../tokenizer.json'; it must be a relative path "
                                           "inside the repo"),
    (entry_with(repo="../../x"), "has extra_files[0].repo '../../x'; it must be a hub repo id, OWNER/NAME"),
    (entry_with(to=None), "needs extra_files[0].to (a string)"),
    (entry_with(to="config.json"), "saves two downloads at 'config.json' (or one inside the other)"),
    (entry_with(to="model.safetensors/tokenizer.json"), "saves two downloads at 'model.safetensors/tokenizer.json'"),
    (entry_with(sha256="xyz"), "has extra_files[0].sha256 'xyz'; it must be 64 hex digits or null"),
    ({**entry_with(), "extra_files": {"to": "x"}}, "has 'extra_files' that is not a list of {\"repo\""),
    ({**entry_with(), "extra_files": ["tokenizer.json"]}, "has extra_files[0] that is not a JSON object"),
    ({**demo_registry()["demo-gguf"], "extra_files": [STARMIE]},
     "has 'extra_files', which only a checkpoint entry may have"),
    ({**entry_with(), "moondream_revision": "2025-07-01"},
     "has moondream_revision '2025-07-01'; it must be one of moondream1, 2024-03-04, 2024-03-06, 2024-03-13, "
     "2024-04-02, 2024-05-08, 2025-01-09, 2025-03-27, 2025-04-14, 2025-06-21"),
    ({**entry_with(), "repo": "a/../b"}, "has repo 'a/../b'; it must be a hub repo id"),
])
def test_a_hostile_or_wrong_extra_file_entry_is_refused_with_its_problem(tmp_path, monkeypatch, entry, problem):
    from moondream_cpp.errors import MoondreamError
    from moondream_cpp.registry import registry

    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(tmp_path))
    (tmp_path / "registry.json").write_text(json.dumps({"x": entry}))
    with pytest.raises(MoondreamError) as e:
        registry()
    assert str(e.value).startswith(f"{tmp_path / 'registry.json'} is not a valid model registry: entry 'x' {problem}")


def test_pull_refuses_an_extra_file_that_would_land_outside_the_checkpoint(ck0621, workdir, home, tmp_path):
    """Through the CLI: refused before anything is asked of the hub or written, for each way out."""
    with hub_2025(ck0621, workdir / "starmie-hub") as hub:
        for to in ("../../x", str(tmp_path / "x"), "starmie-v1/../../../x"):
            (home / "registry.json").write_text(json.dumps(
                {"evil": {**entry_with(to=to), "repo": MODEL_REPO, "revision": "2025-06-21"}}))
            r = run("pull", "evil", home=home, hub_url=hub.url)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"entry 'evil' has extra_files[0].to {to!r}; it must be a relative path inside" in r.stderr
        assert hub.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"] and not (home / "models").exists()


def test_pull_moondream2_gets_the_checkpoint_and_the_starmie_tokenizer_and_converts_them(ck0621, workdir, home,
                                                                                         tmp_path):
    from gguf import GGUFReader

    from moondream_cpp.gguf_check import check_pair

    starmie = workdir / "starmie-hub" / "tokenizer.json"
    with hub_2025(ck0621, starmie.parent) as hub:
        r = run("pull", "moondream2", home=home, hub_url=hub.url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "moondream2:q8_0"  # the 2025 checkpoints' default quant
        fetched = gets(hub)
        assert sorted(fetched) == sorted([f"/{MODEL_REPO}/resolve/2025-06-21/{f}" for f in CK_FILES]
                                         + [f"/{STARMIE_REPO}/resolve/main/tokenizer.json"])  # no 2024 leftover
        row = listed(home, hub.url)["moondream2:q8_0"]
        stored = Path(row["where"])
        assert (row["family"], row["kind"]) == ("moondream2 2025", "HF checkpoint + starmie-v1")
        manifest = json.loads((stored / "manifest.json").read_text())
        text, mm = check_pair(stored / manifest["text"], stored / manifest["mmproj"])  # what the runtime loads
        assert (text.family, text.revision_name, text.tokenizer_kind) == ("2025", "2025-06-21", "starmie")
        assert text.n_embd == json.loads((ck0621 / "config.json").read_text())["config"]["text"]["dim"]
        # the starmie tokenizer of the second repo is the one in the model, whole (not the checkpoint's leftover)
        field = GGUFReader(stored / manifest["text"]).fields["moondream.tokenizer.json"]
        assert json.loads(bytes(field.parts[field.data[0]])) == json.loads(starmie.read_bytes())
        # each source is locked under its own repo@revision, as received
        lock = json.loads((home / "models" / "moondream2" / "lock.json").read_text())["sources"]
        sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ck0621 / f for f in CK_FILES)}
        assert {f: v["sha256"] for f, v in lock[f"{MODEL_REPO}@2025-06-21"]["files"].items()} == sha
        want = {"size": starmie.stat().st_size, "sha256": hashlib.sha256(starmie.read_bytes()).hexdigest()}
        assert lock[f"{STARMIE_REPO}@main"]["files"] == {"tokenizer.json": want}
        assert lock[f"{STARMIE_REPO}@main"]["commit"] == hub.commit(STARMIE_REPO, "main")
        assert lock[f"{MODEL_REPO}@2025-06-21"]["commit"] == hub.commit(MODEL_REPO, "2025-06-21") == manifest["commit"]
        assert sorted(p.name for p in (home / "models").iterdir()) == ["moondream2"]  # the work area is gone
        # it answers by name as the same two downloads converted by hand do (caption --length long: 03-27 on)
        by_hand = tmp_path / "by-hand"
        r = run("convert", ck0621, "-o", by_hand, "--revision", "2025-06-21", "--tokenizer", starmie, "--text-type",
                "q8_0", "--mmproj-type", "q8_0", "--name", "h", home=home, hub_url=hub.url)
        assert r.returncode == 0, r.stderr
        caption = ["caption", IMAGE, "--length", "long", "--max-tokens", "8"]
        named = run(*caption, "-m", "moondream2", home=home, hub_url=hub.url)
        direct = run(*caption, "--text", by_hand / "h-text-q8_0.gguf", "--mmproj", by_hand / "h-mmproj-q8_0.gguf",
                     home=home, hub_url=hub.url)
        assert named.returncode == direct.returncode == 0, named.stderr + direct.stderr
        assert named.stdout == direct.stdout and named.stdout.strip()
        assert run("pull", "moondream2", home=home, hub_url=hub.url).returncode == 0
        assert len(gets(hub)) == len(fetched)  # stored intact: nothing fetched again

        # the tokenizer repo's branch moves: the lock file refuses the new file before any byte is fetched
        hub.add(STARMIE_REPO, "main", "tokenizer.json", starmie.read_bytes().replace(b'"', b' "', 1))
        r = run("pull", "moondream2", "--force", home=home, hub_url=hub.url)
        assert r.returncode == 6 and "Traceback" not in r.stderr, r.stderr
        assert f"moondream2 needs {STARMIE_REPO}/tokenizer.json@main (saved in its checkpoint as {IN_CHECKPOINT})" \
            in r.stderr
        assert "moved tag" in r.stderr and str(home / "models" / "moondream2" / "lock.json") in r.stderr
        assert len(gets(hub)) == len(fetched)
        assert listed(home, hub.url)["moondream2:q8_0"]["where"] == str(stored)  # the stored model is left alone


def test_a_tokenizer_missing_from_the_hub_is_named_and_nothing_is_made(ck0621, home):
    with hub_2025(ck0621, None) as hub:
        r = run("pull", "moondream2", home=home, hub_url=hub.url)
        assert r.returncode == 6 and "Traceback" not in r.stderr, r.stderr
        assert (f"moondream2 needs {STARMIE_REPO}/tokenizer.json@main (saved in its checkpoint as {IN_CHECKPOINT}), "
                "and it could not be had, so nothing was downloaded") in r.stderr
        assert "is not on the hub" in r.stderr
        assert gets(hub) == []  # every file is located before any is fetched: no checkpoint bytes were spent
        assert "moondream2:q8_0" not in listed(home, hub.url)
    models = home / "models"
    assert not list(models.rglob("manifest.json")) and not list(models.rglob("*.gguf"))
    assert not list(models.rglob("*.part")) and not (models / "moondream2" / "lock.json").exists()


def test_a_stored_moondream2_of_the_2024_pair_is_stale_not_used(hub, home):
    """A store from before this release holds the 2024 GGUF pair as `moondream2`: the name now means 2025-06-21, so
    the old pair is reported (run pull, or rm) instead of being loaded as if it were that model."""
    reg = demo_registry()
    (home / "registry.json").write_text(json.dumps({"moondream2": reg["demo-gguf"]}))  # what moondream2 meant then
    assert run("pull", "moondream2", home=home, hub_url=hub.url).returncode == 0
    (home / "registry.json").write_text(json.dumps(reg))  # the bundled registry's moondream2 again
    r = run("query", IMAGE, "What color is the circle?", "-m", "moondream2", home=home, hub_url=hub.url)
    assert r.returncode == 8 and "Traceback" not in r.stderr, r.stderr
    assert ("the stored moondream2:f16 is not the model moondream2 names now (it was pulled from test/demo-gguf@v1, "
            f"and moondream2 now names {MODEL_REPO}@2025-06-21)") in r.stderr
    assert "moondream-cpp pull moondream2" in r.stderr and "moondream-cpp rm moondream2:f16" in r.stderr
    row = listed(home, hub.url)["moondream2:f16"]
    assert row["stale"] and (Path(row["where"]) / TEXT.name).exists()  # listed as stale, kept until removed
