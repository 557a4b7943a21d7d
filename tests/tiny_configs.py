"""Settings (``--set``) that make any bundled configuration tiny, for cross-validation tests on
the 48 x 48 x 16 phantoms (the models work at 32 x 32, one epoch of two iterations)."""

TINY_CV = [
    "data.size=32",
    "data.margin=1",
    "train.epochs=1",
    "train.iterations_per_epoch=2",
    "train.batch_size=2",
    "train.val_batch_size=16",
    "augment.elastic_prob=0.0",
    "liver:model.base_width=2",
    "liver:model.depth=2",
    "tumour:model.levels=2",
    "tumour:model.growth=2",
    "tumour:model.first_filters=4",
    "tumour:model.layers_per_block=2",
]
