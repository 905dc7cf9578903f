"""One module per public dataset, each with ``convert(cfg: ConvertConfig) -> DatasetSpec``."""
