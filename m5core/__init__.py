"""M5 shared core: schema, model bundle, ONNX encoder, stores, events, index, settings."""
