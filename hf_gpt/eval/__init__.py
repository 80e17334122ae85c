"""Evaluation: scoring and perplexity (`scoring`), zero/one/few-shot tasks (`fewshot`), GPT-3's synthetic tasks
(`synthetic`), their export as lm-evaluation-harness tasks (`lm_eval_export`) and the `hf-gpt eval` commands."""
