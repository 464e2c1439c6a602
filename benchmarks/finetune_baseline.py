"""The baseline of benchmarks/finetune_vs_trainer.py: the plain script a user writes with
transformers' Trainer and peft, nothing of Audobon. LoRA SFT on chat rows with the loss on
the assistant's answer, dynamic padding (DataCollatorForSeq2Seq), an evaluation at the end,
the adapter saved.

    python benchmarks/finetune_baseline.py --model DIR --data DIR --out DIR --steps N [...]

Prints one JSON line: the tokens trained (non-padding), train loss, eval loss.
"""

from __future__ import annotations

import argparse
import json

import datasets
import torch
import transformers
from peft import LoraConfig, TaskType, get_peft_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a folder with train.jsonl and validation.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-rows", type=int, default=32)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    a = p.parse_args()

    transformers.set_seed(a.seed)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = datasets.load_dataset("json", data_files={"train": f"{a.data}/train.jsonl",
                                                     "validation": f"{a.data}/validation.jsonl"})

    def encode(row):
        msgs = row["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        return {"input_ids": p_ids + c_ids, "attention_mask": [1] * (len(p_ids) + len(c_ids)),
                "labels": [-100] * len(p_ids) + c_ids}

    train = data["train"].map(encode, remove_columns=data["train"].column_names)
    val = data["validation"].select(range(min(a.eval_rows, len(data["validation"]))))
    val = val.map(encode, remove_columns=val.column_names)

    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules=a.targets.split(","),
                                             task_type=TaskType.CAUSAL_LM))
    collator = transformers.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    seen = {"tokens": 0}

    def collate(features):
        seen["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collator(features)

    args = transformers.TrainingArguments(
        output_dir=f"{a.out}/checkpoints", max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size, learning_rate=a.lr, seed=a.seed, logging_steps=1,
        eval_strategy="steps", eval_steps=a.steps, save_strategy="steps", save_steps=a.steps,
        report_to=[], remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                   data_collator=collate, processing_class=tok)
    out = trainer.train()
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    model.save_pretrained(f"{a.out}/adapter")
    # The collator also saw the evaluation's rows (once per evaluation): only training counts.
    eval_tokens = sum(len(ids) for ids in val["input_ids"]) * len(evals)
    print(json.dumps({"tokens": seen["tokens"] - eval_tokens, "train_loss": out.training_loss,
                      "eval_loss": evals[-1] if evals else None, "steps": trainer.state.global_step}))


if __name__ == "__main__":
    main()
