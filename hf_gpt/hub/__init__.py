"""Model folders and the Hub: the one writer of a model folder (`model_folder`), model cards (`cards`) and
`hf-gpt push` (`push`)."""
