def allow_mmengine_checkpoints():
    pass
