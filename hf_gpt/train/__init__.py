"""Training: pretraining (`pretraining`, its run folder and inputs in `pretraining_setup`) and GPT-1 fine-tuning
(`finetuning`, with the task input transforms of `task_transforms`), and what they share: checkpoints,
optimizer and schedule, Ctrl-C handling and metrics."""
