"""`pagoda generate` prints the generated text; bad flags are a message and status 2."""

from __future__ import annotations

from pagoda.cli import main


def test_generate_prints_the_text(tiny_model_dir, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        " red",
        "--max-tokens",
        "4",
        "--device",
        "cpu",
    ]
    assert main(args + ["--num-kv-blocks", "8", "--stop", "red"]) == 0
    assert capsys.readouterr().out == " green blue \n"


def test_generate_reports_bad_input(tiny_model_dir, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "x",
        "--temperature",
        "-1",
        "--device",
        "cpu",
    ]
    assert main(args + ["--num-kv-blocks", "8"]) == 2
    assert "temperature" in capsys.readouterr().err
