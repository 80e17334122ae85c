"""Generation: loading a causal LM for use (`loading`), sampling for `hf-gpt generate` (`sampling`), and
`StaticDecoder`, the fixed-shape decoder whose step CUDA graphs capture (`static_decoder`)."""
