"""FACET-VLM training, evaluation, Trainer glue, publishing and the `facet-vlm` command line."""
