"""Stage 11 (src/11_publish.py): the model card is built from the run's reports and written into the folder; with
push_to_hub the folder goes up through huggingface_hub's real HfApi.create_repo / upload_folder, with only the
HTTP transport replaced (httpx2.MockTransport through huggingface_hub.set_client_factory): no network."""
from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import httpx2
import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
import pytest
import torch
from safetensors.torch import save_file

from arena_distill import encoding_record as er
from arena_distill.io import StageInputError, mark_done

ENCODING = {"max_length": 1024, "prompt_max_tokens": 256, "prompt_max_words": 256, "response_max_words": 700,
            "truncation_side": "right"}


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A finished run's outputs as stages 2, 4/7, 8 and 9 leave them (weights are small stand-ins)."""
    save = tmp_path / "save"
    gptq = save / "final_model_gptq"
    gptq.mkdir(parents=True)
    (gptq / "config.json").write_text(json.dumps({"architectures": ["Gemma2ForSequenceClassification"],
                                                  "quantization_config": {"bits": 8}}))
    save_file({"w": torch.zeros(4, 4)}, str(gptq / "model.safetensors"))
    (gptq / "heldout_predictions.parquet").write_bytes(b"PAR1 competition ids and labels")
    (gptq / "quant_report.json").write_text(json.dumps({"bits": 8, "check": {
        "rows": 100, "fp_log_loss": 0.9012, "quant_log_loss": 0.9031, "argmax_agreement": 0.99}}))
    er.write_record(gptq, er.make_record(ENCODING))
    mark_done(gptq, stage="quantize")
    for name, base in (("Gemma2_9b", 0.88), ("llama3_70b", 0.86)):
        for k in range(2):
            (save / f"{name}fold{k}").mkdir()
            (save / f"{name}fold{k}" / "metrics.json").write_text(json.dumps(
                {"valid_log_loss": base + k / 100, "valid_accuracy": 0.52, "n_valid": 11000}))
    processed = tmp_path / "processed"
    processed.mkdir()
    (processed / "report.json").write_text(json.dumps({"rows_in": {"train": 57477, "33k": 21187}, "imports": {
        "33k": {"file": "/d/chatbot_arena_conversations.jsonl", "format": "arena_conversations", "rows_in": 33000,
                "rows_out": 21187, "dropped": {"both_bad": 11813}}}}))
    return tmp_path


def _argv(root: Path, *extra: str) -> list[str]:
    return ["student=Gemma2_9b", "teachers=[llama3_70b, qwen2_72b]", "n_folds=2", f"save_dir={root / 'save'}",
            f"processed_dir={root / 'processed'}", f"card_out={root / 'sub' / 'model_card.md'}", *extra]


def test_card_only(stage_module, run: Path) -> None:
    report = stage_module("11_publish").main(_argv(run))
    card = (run / "save" / "final_model_gptq" / "README.md").read_text()
    assert card == (run / "sub" / "model_card.md").read_text() and report["pushed"] is False
    assert card.startswith("---\nlicense: gemma\n") and "base_model: google/gemma-2-9b-it" in card
    assert "| Gemma2_9b | 1 | 0.8900 | 0.5200 | 11000 |" in card and "| llama3_70b | 0 | 0.8600 |" in card
    assert "GPTQ 8-bit" in card and "log loss 0.9012 -> 0.9031" in card
    assert "| max_length | 1024 |" in card and 'User question:\n"""{prompt}"""' in card
    assert "| teacher | Qwen/Qwen2-72B-Instruct | tongyi-qianwen |" in card
    assert "chatbot_arena_conversations.jsonl` (arena_conversations): 33000 in, 21187 out" in card
    assert json.loads((run / "sub" / "publish_report.json").read_text())["cv"]["Gemma2_9b"] == {"0": 0.88, "1": 0.89}


def test_push_to_hub_through_huggingface_hub(stage_module, run: Path, monkeypatch) -> None:
    requests: list[httpx2.Request] = []

    def hub(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/me/arena-judge", "name": "me/arena-judge"})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if path.endswith("/commit/main"):
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/me/arena-judge/commit/1a2b",
                                              "commitOid": "1a2b" * 10, "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"not mocked: {path}"})

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    try:
        report = stage_module("11_publish").main(_argv(run, "push_to_hub=me/arena-judge"))
    finally:
        huggingface_hub.set_client_factory(hf_http.default_client_factory)
    assert report["pushed"] and report["commit_url"].endswith("/commit/1a2b") and report["private"] is True
    create = next(r for r in requests if r.url.path == "/api/repos/create")
    assert json.loads(create.content)["visibility"] == "private"  # huggingface_hub 2.x sends visibility
    assert json.loads(create.content)["name"] == "arena-judge"
    assert create.headers["authorization"] == "Bearer hf_test_token"
    commit = next(r for r in requests if r.url.path.endswith("/commit/main"))
    body = commit.content
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    ops = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    files = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in ops if op["key"] == "file"}
    assert set(files) == {"README.md", "config.json", "model.safetensors", "quant_report.json", er.RECORD_FILE,
                          "DONE.json"}  # no heldout_predictions.parquet (competition rows), no hidden files
    assert files["README.md"].decode() == (run / "save" / "final_model_gptq" / "README.md").read_text()
    assert json.loads(files[er.RECORD_FILE])["encoding"] == ENCODING


def test_refusals(stage_module, run: Path, monkeypatch) -> None:
    stage = stage_module("11_publish")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StageInputError, match="HF_HUB_OFFLINE"):
        stage.main(_argv(run, "push_to_hub=me/arena-judge"))
    assert (run / "save" / "final_model_gptq" / "README.md").is_file()  # the card is written before the upload
    (run / "save" / "final_model_gptq" / er.RECORD_FILE).unlink()
    with pytest.raises(StageInputError, match="encoding.json is missing"):
        stage.main(_argv(run))
    with pytest.raises(SystemExit):
        stage.main(_argv(run, "push_to_hub=no-slash"))
