"""Instruction records: building, validating, reading, and the resumable append-only writer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from maemi.teachers.records import RecordError, RecordWriter, make_record, read_records, validate_record


def rec(image: str = "a/1.png", key: str = "basics.material", length: str = "short", **kw) -> dict:
    args = dict(task="vqa", family="basics", length=length, label="a", teacher="measure", question_key=key)
    return make_record([image], "What is it?", "A thing.", **(args | kw))


def test_make_record_follows_the_llava_format():
    r = rec()
    assert r["conversations"] == [{"from": "human", "value": "<image>\nWhat is it?"},
                                  {"from": "gpt", "value": "A thing."}]
    assert r["id"] == "a/1.png#basics.material#short" and r["images"] == ["a/1.png"]
    multi = make_record(["x.png", "y.png"], "Differences?", "Size.", task="compare", family="compare.inter_class",
                        length="long", label=["a", "b"], teacher="measure", question_key="compare.inter_class")
    assert multi["conversations"][0]["value"] == "<image>\n<image>\nDifferences?"


@pytest.mark.parametrize("change, problem", [
    (lambda r: r.pop("task"), "missing key 'task'"),
    (lambda r: r.update(task="chat"), "'task' is 'chat'"),
    (lambda r: r.update(length="medium"), "'length' is 'medium'"),
    (lambda r: r.update(images=["a.png", "b.png"]), "1 <image> token"),
    (lambda r: r["conversations"].reverse(), "turn 0 must come from 'human'"),
    (lambda r: r["conversations"].pop(), "human/gpt pairs"),
    (lambda r: r["conversations"][1].update(value=""), "turn 1 has no text"),
    (lambda r: r.update(images=[]), "non-empty list"),
])
def test_validate_record_names_the_problem(change, problem):
    r = rec()
    change(r)
    with pytest.raises(RecordError, match=f"^here: .*{problem}"):
        validate_record(r, "here")


def test_make_record_rejects_interleaved_prompt_with_wrong_token_count():
    with pytest.raises(RecordError, match="2 <image> token"):
        make_record(["a.png"], "<image>\nx\n<image>\ny", "z", task="classify", family="few_shot", length="short",
                    label="a", teacher="label", question_key="classify.few_shot")


def test_read_records_reports_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec()) + "\n" + "{oops\n")
    with pytest.raises(RecordError, match=r"d\.jsonl:2: not valid JSON"):
        read_records(path)
    bad = rec()
    bad["length"] = "tiny"
    path.write_text(json.dumps(rec()) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"d\.jsonl:3: 'length'"):
        read_records(path)


def test_writer_skips_duplicates_and_refuses_to_clobber(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordWriter(path) as w:
        assert w.write([rec(), rec(length="long")]) == 2
        assert w.write([rec()]) == 0  # same id again
    with pytest.raises(FileExistsError, match="--resume"):
        with RecordWriter(path):
            pass
    with RecordWriter(path, resume=True) as w:
        assert w.done_keys() == {"a/1.png#basics.material#short", "a/1.png#basics.material#long"}
        assert w.write([rec(), rec("b/2.png")]) == 1
    assert [r["id"] for r in read_records(path)] == ["a/1.png#basics.material#short", "a/1.png#basics.material#long",
                                                     "b/2.png#basics.material#short"]
    with RecordWriter(path, overwrite=True) as w:
        w.write([rec("c/3.png")])
    assert len(read_records(path)) == 1


def test_resume_cuts_a_partial_trailing_line(tmp_path):
    path = tmp_path / "out.jsonl"
    full = json.dumps(rec()) + "\n"
    path.write_text(full + json.dumps(rec("b/2.png"))[:40])  # killed mid-line
    with RecordWriter(path, resume=True) as w:
        assert w.done_keys() == {rec()["id"]}
        w.write([rec("b/2.png")])
    assert [r["images"][0] for r in read_records(path)] == ["a/1.png", "b/2.png"]


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path):
    """A real process appending records is killed with SIGKILL at a random point; resuming completes the set."""
    path = tmp_path / "out.jsonl"
    script = textwrap.dedent(f"""
        import sys
        from maemi.teachers.records import RecordWriter, make_record
        resume = sys.argv[1] == "resume"
        with RecordWriter({str(path)!r}, resume=resume) as w:
            for i in range(400):
                r = make_record([f"img/{{i}}.png"], "Q?", "A " * 200, task="vqa", family="f", length="short",
                                label=None, teacher="t", question_key="f.q")
                w.write([r])
                if i == 50:
                    print("halfway", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, "fresh"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "halfway"
    proc.kill()
    proc.wait()
    n_before = sum(1 for line in path.read_bytes().split(b"\n") if line)
    assert 0 < n_before
    subprocess.run([sys.executable, "-c", script, "resume"], check=True, stdout=subprocess.DEVNULL)
    ids = [r["id"] for r in read_records(path)]
    assert len(ids) == len(set(ids)) == 400
