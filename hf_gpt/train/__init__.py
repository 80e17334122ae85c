"""Training: one loop (`loop`: accumulation, checkpoints and resume, the NaN guard, Ctrl-C, metrics, the model
folder) with two drivers: pretraining (`pretraining`, its inputs in `pretraining_setup`) and GPT-1 fine-tuning
(`finetuning`, with the task input transforms of `task_transforms`); and what they use: `checkpoints`,
`optimization` (AdamW and the schedule), `interrupts` and `metrics`."""
