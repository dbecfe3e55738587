"""`cai constitution import` for the two published formats (fixtures written for these tests)."""

from __future__ import annotations

import json

from cai.constitution import load_constitution


def test_anthropic_format_with_compare_and_few_shot(cli, tmp_path):
    src = tmp_path / "critique_revision.json"
    src.write_text(
        json.dumps(
            {
                # the published file's shape: each request ends in a blank line and the marker
                # the model answers after; the first also carries a leading marker
                "kindness": {
                    "prompt": [
                        "CritiqueRequest: Point out where the reply was unkind.\n\nCritique:"
                    ],
                    "edit_request": (
                        "RevisionRequest: Rewrite the reply so it is kind.\n\nRevision:"
                    ),
                },
                "safety": {
                    "prompt": ["Point out anything unsafe in the reply.\n\nCritique:"],
                    "edit_request": "Rewrite the reply without the unsafe parts.\n\nRevision:",
                },
            }
        )
    )
    compare = tmp_path / "compare.json"
    compare.write_text(
        json.dumps(["\nWhich reply is kinder? Options:", "\nWhich reply is safer? Options:"])
    )
    shots = tmp_path / "shots.json"
    shots.write_text(
        json.dumps(
            [
                "\n\nHuman: Can you help me?\n\nAssistant: No.\n\nHuman: Please?"
                "\n\nAssistant: Fine, whatever."
                "\n\nCritiqueRequest: Point out where the reply was unkind."
                "\n\nCritique: It was curt."
                "\n\nRevisionRequest: Rewrite the reply so it is kind."
                "\n\nRevision: Of course, what do you need?"
                "\n\nHuman:"
            ]
        )
    )
    out = tmp_path / "out.yaml"
    code, stdout, err = cli(
        "constitution",
        "import",
        src,
        "--format",
        "anthropic",
        "--out",
        out,
        "--compare",
        compare,
        "--few-shot",
        shots,
    )
    assert code == 0, err
    c = load_constitution(out)
    assert [p.id for p in c.principles] == ["kindness", "safety"]
    assert c.principle("kindness").critique == "Point out where the reply was unkind."
    assert c.principle("safety").revision == "Rewrite the reply without the unsafe parts."
    assert c.principle("safety").compare == "Which reply is safer?"
    markers = ("Critique:", "Revision:", "CritiqueRequest:", "RevisionRequest:")
    for p in c.principles:
        for text in (p.critique, p.revision):
            assert not text.endswith(markers) and not text.startswith(markers), text
    ex = c.few_shot.critique[0]
    assert [m.content for m in ex.prompt] == ["Can you help me?", "No.", "Please?"]
    assert ex.response == "Fine, whatever." and ex.revision == "Of course, what do you need?"
    assert ex.critique_request == "Point out where the reply was unkind."


def test_hf_format(cli, tmp_path):
    src = tmp_path / "constitution.json"
    chat = [
        {"role": "user", "content": "Tell me a joke about my boss."},
        {"role": "assistant", "content": "He is bad."},
        {"role": "user", "content": "Is that reply mean?"},
        {"role": "assistant", "content": "Yes, a bit."},
        {"role": "user", "content": "Make it gentle."},
        {"role": "assistant", "content": "Why did the boss bring a ladder? To reach new heights."},
    ]
    src.write_text(
        json.dumps(
            {
                "constitutions": [{"critic": "Is that reply mean?", "revision": "Make it gentle."}],
                "system_chat": [chat],
            }
        )
    )
    out = tmp_path / "hf.yaml"
    code, _, err = cli("constitution", "import", src, "--format", "hf", "--out", out)
    assert code == 0
    assert "generic question" in err
    c = load_constitution(out)
    assert c.principles[0].critique == "Is that reply mean?"
    assert c.few_shot.critique[0].prompt == "Tell me a joke about my boss."
    assert c.few_shot.critique[0].revision.startswith("Why did the boss")


def test_import_bad_file(cli, tmp_path):
    src = tmp_path / "x.json"
    src.write_text("[1, 2")
    code, _, err = cli(
        "constitution", "import", src, "--format", "hf", "--out", tmp_path / "o.yaml"
    )
    assert code == 2 and f"{src}:1: not valid JSON" in err
    assert not (tmp_path / "o.yaml").exists()
