"""`maemi teach` end to end: the measure teacher on the synthetic corpus, and the remote teacher against a real HTTP
server on 127.0.0.1 (tests/fake_openai_server.py): retries, rejects, and a SIGKILLed run resumed without loss or
duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from maemi.cli import app
from maemi.data.datasets import Sample
from maemi.data.synth import synthesize
from maemi.teachers.measure import MeasureTeacher
from maemi.teachers.pipeline import TeachConfig, _few_shot_records, teach
from maemi.teachers.questions import LENGTHS, PROFILES, TASKS, get_profile
from maemi.teachers.records import few_shot_prompt, read_records
from maemi.teachers.remote import OpenAITeacher
from maemi.teachers.sampling import few_shot_demos

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

SEM = get_profile("sem")
GENERIC = get_profile("generic")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    synthesize(root, per_class=3, seed=0, width=256, height=192)  # 10 classes x 3, reduced size
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    synthesize(root, per_class=2, seed=1, classes=["Particles", "Nanowires", "Powder"], width=128, height=96)
    return root


def per_image_counts(records: list[dict]) -> Counter:
    return Counter(r["images"][0] for r in records if len(r["images"]) == 1)


def test_measure_teacher_writes_every_family_task_and_length(corpus, tmp_path):
    out = tmp_path / "data.jsonl"
    report = teach(corpus, out, MeasureTeacher("sem"), TeachConfig(compare=2, few_shot=3, shots=2), progress=False)
    records = read_records(out)  # validates every line
    assert report.images == report.answered == 30 and report.records == len(records)
    assert {r["task"] for r in records} == set(TASKS)
    assert {r["length"] for r in records} == set(LENGTHS)
    families = {r["family"] for r in records}
    assert {q.family for q in SEM.questions} | {"compare.inter_class", "compare.intra_class", "compare.spatial",
                                                 "few_shot"} == families
    for family in {q.family for q in SEM.questions}:  # each family at both lengths
        assert {r["length"] for r in records if r["family"] == family} == set(LENGTHS)
    # every image: each question at both lengths, exactly once; paths relative to the dataset root
    assert set(per_image_counts(records).values()) == {2 * len(SEM.questions)}
    assert all((corpus / p).is_file() for r in records for p in r["images"])
    assert len({r["id"] for r in records}) == len(records)
    compare = [r for r in records if r["task"] == "compare"]
    assert {len(r["images"]) for r in compare} >= {2, 3}
    inter = [r for r in compare if r["family"] == "compare.inter_class"]
    assert all(r["label"][0] != r["label"][1] for r in inter)
    intra = [r for r in compare if r["family"] == "compare.intra_class"]
    assert all(r["label"][0] == r["label"][1] for r in intra)
    for r in (r for r in records if r["family"] == "few_shot"):
        assert r["conversations"][1]["value"] == r["label"] and len(r["images"]) == 3
    # classify records answer with the dataset's label; captions mention the magnification from the metadata
    for r in records:
        if r["family"] == "classify" and r["length"] == "short":
            assert r["conversations"][1]["value"] == r["label"]
    # deterministic: a second run writes the same bytes
    again = tmp_path / "again.jsonl"
    teach(corpus, again, MeasureTeacher("sem"), TeachConfig(compare=2, few_shot=3, shots=2), progress=False)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"sem"}))
def test_measure_teacher_answers_every_profile(small, tmp_path, profile):
    out = tmp_path / "d.jsonl"
    teach(small, out, MeasureTeacher(profile), TeachConfig(profile=profile, limit=2), progress=False)
    records = read_records(out)
    assert len(records) == 2 * 2 * len(get_profile(profile).questions)
    assert {r["question_key"] for r in records} == {q.key for q in get_profile(profile).questions}


def test_cli_measure_limit_resume_and_refusal_to_clobber(small, tmp_path):
    runner = CliRunner()
    out = tmp_path / "d.jsonl"
    args = ["teach", str(small), "--out", str(out), "--profile", "generic", "--quiet"]
    result = runner.invoke(app, args + ["--limit", "2"])
    assert result.exit_code == 0, result.output
    assert set(per_image_counts(read_records(out))) == {"Nanowires/nanowires_0000.png", "Particles/particles_0000.png"}
    result = runner.invoke(app, args + ["--limit", "4"])
    assert result.exit_code == 1 and "--resume" in result.output
    result = runner.invoke(app, args + ["--limit", "4", "--resume"])
    assert result.exit_code == 0, result.output
    assert "(2 already done)" in result.output
    counts = per_image_counts(read_records(out))
    assert len(counts) == 4 and set(counts.values()) == {2 * len(GENERIC.questions)}
    result = runner.invoke(app, args + ["--profile", "tem"])
    assert result.exit_code == 1 and "unknown profile 'tem'" in result.output


def test_cli_teaches_one_side_of_a_split(small, tmp_path):
    split = tmp_path / "splits.json"
    test_side = ["Nanowires/nanowires_0001.png", "Powder/powder_0000.png"]
    split.write_text(json.dumps({"train": ["Particles/particles_0000.png"], "val": [], "test": test_side}))
    out = tmp_path / "test.jsonl"
    runner = CliRunner()
    args = ["teach", str(small), "--out", str(out), "--profile", "generic", "--quiet", "--split", str(split)]
    result = runner.invoke(app, args + ["--subset", "test", "--few-shot", "2", "--shots", "1"])
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert {p for r in records for p in r["images"]} == set(test_side)
    result = runner.invoke(app, args + ["--subset", "holdout"])
    assert result.exit_code == 1 and "no subset 'holdout'" in result.output
    result = runner.invoke(app, args[:-2] + ["--subset", "test"])
    assert result.exit_code == 1 and "go together" in result.output


def test_unreadable_images_are_skipped_and_reported(small, tmp_path):
    root = tmp_path / "data"
    (root / "Particles").mkdir(parents=True)
    for name in ("particles_0000.png", "particles_0001.png"):
        (root / "Particles" / name).write_bytes((small / "Particles" / name).read_bytes())
    (root / "Particles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = CliRunner().invoke(app, ["teach", str(root), "--out", str(tmp_path / "d.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "skipped unreadable Particles/broken.png:" in result.output
    assert set(per_image_counts(read_records(tmp_path / "d.jsonl"))) == {"Particles/particles_0000.png",
                                                                          "Particles/particles_0001.png"}


# --------------------------------------------------------------------------------------------- the remote teacher
def remote(server: FakeOpenAIServer, tmp_path: Path, **kw) -> OpenAITeacher:
    options = dict(timeout=5.0, max_retries=3, backoff_base=0.01, cache_dir=tmp_path / "cache") | kw
    return OpenAITeacher(server.url, "fake-vlm", **options)


def test_remote_429_500_and_timeouts_are_retried(small, tmp_path):
    with FakeOpenAIServer(rate_limit_first=2, fail_first=1) as server:
        report = teach(small, tmp_path / "a.jsonl", remote(server, tmp_path), TeachConfig(profile="generic",
                       concurrency=2), progress=False)
        statuses = Counter(r["status"] for r in server.requests)
    assert statuses[429] == 2 and statuses[500] == 1 and statuses[200] == 6
    assert report.answered == 6 and report.rejects == 0 and report.prompt_tokens > 0
    assert set(per_image_counts(read_records(tmp_path / "a.jsonl")).values()) == {2 * len(GENERIC.questions)}

    with FakeOpenAIServer(sleep_s=2.0, sleep_first=1) as server:  # the first request times out, then is retried
        teacher = remote(server, tmp_path, timeout=0.5, cache_dir=None)
        report = teach(small, tmp_path / "b.jsonl", teacher, TeachConfig(profile="generic", limit=1), progress=False)
        assert server.count == 2
    assert report.answered == 1 and len(read_records(tmp_path / "b.jsonl")) == 2 * len(GENERIC.questions)


def test_remote_malformed_replies_go_to_rejects_and_are_asked_again_on_resume(small, tmp_path):
    out, rejects = tmp_path / "d.jsonl", tmp_path / "rejects.jsonl"
    config = TeachConfig(profile="generic", compare=1)
    with FakeOpenAIServer(mode="malformed") as server:
        report = teach(small, out, remote(server, tmp_path), config, rejects_path=rejects, progress=False)
        assert report.rejects == 6 + 3 and report.records == 0  # 6 images, 3 comparison records
        lines = [json.loads(line) for line in rejects.read_text().splitlines()]
        assert {tuple(r["images"]) for r in lines if len(r["images"]) == 1} == {(p,) for p in
                                                                                 _relpaths(small)}
        assert all("not JSON" in r["reason"] and r["teacher"] == "openai:fake-vlm" for r in lines)
        server.configure(mode="ok")
        report = teach(small, out, remote(server, tmp_path), config, rejects_path=rejects, resume=True,
                       progress=False)
    assert report.rejects == 0 and report.answered == 6
    records = read_records(out)
    assert set(per_image_counts(records).values()) == {2 * len(GENERIC.questions)}
    assert Counter(r["family"] for r in records if r["task"] == "compare") == {
        "compare.inter_class": 2, "compare.intra_class": 2, "compare.spatial": 2}


def _relpaths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def test_remote_run_killed_midway_resumes_with_every_image_exactly_once(small, tmp_path):
    out = tmp_path / "d.jsonl"
    lines_per_image = 2 * len(GENERIC.questions)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    with FakeOpenAIServer(sleep_s=0.4) as server:
        cmd = [sys.executable, "-m", "maemi.cli", "teach", str(small), "--out", str(out), "--teacher", "openai",
               "--base-url", server.url, "--model", "fake-vlm", "--profile", "generic", "--concurrency", "2",
               "--quiet"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 2 * lines_per_image:
                break
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait()
        written = per_image_counts(read_records(out))
        assert 2 <= len(written) < 6, "the run should have been killed midway"

        server.configure(sleep_s=0.0, reset=True)
        done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert server.count <= 6 - len(written)  # images already written are not asked again
        counts = per_image_counts(read_records(out))
        assert set(counts) == _relpaths(small) and set(counts.values()) == {lines_per_image}

        # a fresh run over the same images is served from the cache: no request pays twice
        server.configure(reset=True)
        again = subprocess.run(cmd[:6] + [str(tmp_path / "again.jsonl")] + cmd[7:], env=env, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert server.count == 0 and "6 replies from cache" in again.stdout


def test_few_shot_records_hold_the_most_similar_demonstrations_in_a_reproducible_shuffled_order(tmp_path):
    classes = ["a", "b", "c"]
    samples = [Sample(path=tmp_path / f"{classes[i % 3]}/{i}.png", relpath=f"{classes[i % 3]}/{i}.png",
                      label=classes[i % 3]) for i in range(30)]
    embeddings = np.random.default_rng(0).normal(size=(30, 8))
    profile, config = get_profile("generic"), TeachConfig(few_shot=30, shots=4)
    records = _few_shot_records(samples, embeddings, profile, config)
    assert len(records) == 30
    assert records == _few_shot_records(samples, embeddings, profile, config)  # same records on a resumed run
    index = {s.relpath: i for i, s in enumerate(samples)}
    nearest_last = 0
    for record in records:
        query = index[record["images"][-1]]
        support = [i for i in range(30) if i != query]
        nearest = [support[j] for j in few_shot_demos(embeddings[query], embeddings[support], 4)]  # most similar last
        demos = [index[rel] for rel in record["images"][:-1]]
        assert sorted(demos) == sorted(nearest)
        assert record["conversations"][0]["value"] == few_shot_prompt(profile.classify_question.text,
                                                                      [samples[i].label for i in demos])
        nearest_last += demos[-1] == nearest[-1]
    assert nearest_last < 15  # unshuffled: all 30; shuffled, about one in four


def test_the_demonstration_order_does_not_depend_on_the_process():
    """A resumed teacher run in a new process must write the records it would have written: the order must not be
    seeded by anything that changes between processes (Python's hash() changes with PYTHONHASHSEED)."""
    code = """if True:
        import numpy as np
        from maemi.data.datasets import Sample
        from maemi.teachers.pipeline import TeachConfig, _few_shot_records
        from maemi.teachers.questions import get_profile
        samples = [Sample(path=None, relpath=f"{'ab'[i % 2]}/{i}.png", label='ab'[i % 2]) for i in range(12)]
        embeddings = np.random.default_rng(0).normal(size=(12, 4))
        records = _few_shot_records(samples, embeddings, get_profile("generic"), TeachConfig(few_shot=12, shots=4))
        print([r["images"] for r in records])"""
    orders = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(h)},
                             capture_output=True, text=True, check=True).stdout for h in (1, 2, 3)}
    assert len(orders) == 1 and orders.pop().count(".png") == 12 * 5
