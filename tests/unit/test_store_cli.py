"""`lethe requests ...` as a user types it, against the digits data set, on both store backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from lethe.cli import main


@pytest.fixture()
def lethe(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LETHE_DIGEST_KEY", "test-key")
    common = ["--dataset", "digits", "--workdir", str(tmp_path / "wd"), "--requests-db", store_url]

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(["requests", argv[0], *common, *argv[1:]])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _ids(tmp_path: Path, *ids: str) -> str:
    f = tmp_path / "ids.txt"
    f.write_text("# a data subject's images\n" + "\n".join(ids) + "\n")
    return str(f)


def test_submit_list_show_cancel_audit(lethe, tmp_path: Path) -> None:
    rc, out, err = lethe(
        "submit",
        "--model",
        "faces",
        "--ids",
        _ids(tmp_path, "digits-0007", "digits-0011"),
        "--reference",
        "T-9",
    )
    rid = out.strip().splitlines()[-1]
    assert rc == 0 and len(rid) == 36 and f"request {rid} queued for faces: 2 ids" in err
    rc, out, _ = lethe("submit", "--model", "faces", "--classes", "3", "--deadline", "2099-01-31")
    cls_id = out.strip()
    rc, out, _ = lethe("list", "--model", "faces")
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "model", "what", "status"] and len(lines) == 3
    assert rid in lines[1] and "2 ids" in lines[1] and "queued" in lines[1]
    assert cls_id in lines[2] and "2099-01-31 23:59" in lines[2]
    rc, out, _ = lethe("show", rid[:8])
    assert rc == 0 and "T-9" in out and "digits-0007" not in out and "(key " in out  # ids stay in the store
    assert lethe("cancel", rid, "--reason", "withdrawn by the subject")[0] == 0
    rc, out, _ = lethe("list", "--status", "queued")
    assert rid not in out and cls_id in out
    rc, out, _ = lethe("audit", rid)
    rows = out.strip().splitlines()[1:]
    assert [r.split()[3:5] for r in rows] == [
        ["-", "received"],
        ["received", "queued"],
        ["queued", "cancelled"],
    ]
    assert "withdrawn by the subject" in rows[-1]
    rc, _, err = lethe("cancel", rid)
    assert (
        rc == 2
        and err.strip()
        == f"lethe: error: request {rid} is already cancelled; expected a request that is not final"
    )


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        (["--classes", "eleven"], "unknown class name"),
        (["--feature", "glasses"], "unknown feature"),
        (["--classes", "0,1,2,3,4,5,6,7,8,9"], "forget requests would cover all training data"),
    ],
)
def test_a_bad_request_is_rejected_in_one_line_and_recorded(lethe, what: list[str], reason: str) -> None:
    rc, out, err = lethe("submit", *what)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and reason in err
    rid = err.split("request ")[1].split(" ")[0]
    rc, out, _ = lethe("show", rid)
    assert "rejected" in out and reason in out


def test_unknown_ids_are_counted_never_named(lethe, tmp_path: Path) -> None:
    rc, _, err = lethe("submit", "--ids", _ids(tmp_path, "digits-0001", "not-an-id-4711"))
    assert rc == 2 and "1 unknown ids" in err and "not-an-id-4711" not in err and "digits-0001" not in err


def test_requests_together_may_not_leave_nothing_to_retain(lethe) -> None:
    assert lethe("submit", "--classes", "0,1,2,3,4")[0] == 0
    rc, _, err = lethe("submit", "--classes", "5,6,7,8,9")
    assert rc == 2 and "with this model's other requests" in err
    rc, _, _ = lethe("submit", "--classes", "5,6,7,8")
    assert rc == 0


def test_a_bad_deadline_names_the_flag(lethe) -> None:
    rc, _, err = lethe("submit", "--classes", "3", "--deadline", "next friday")
    assert rc == 2 and "--deadline" in err and "YYYY-MM-DD" in err
    rc, _, err = lethe("submit", "--classes", "3", "--deadline", "2001-01-01")
    assert rc == 2 and "deadline is not after" in err
