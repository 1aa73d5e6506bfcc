"""WebDataset shards: the data layer. Never imports a model, ray, or comgan/cluster but comgan.errors.

io.py         the one way to open a URL (local path, file://, s3://) through fsspec
synthetic.py  the built-in seeded dataset: one object on a background, with its exact mask
writer.py     samples -> shard-NNNNNN.tar + manifest.json
converters.py image folders, CUB-200-2011, Oxford 102 Flowers -> samples for the writer
progress.py   the progress line of long writes (jobs/make_shards.py); say, the one way a job prints a line
images.py     decoding both sides share: any image to 8-bit RGB, any mask to 0/255
index.py      what a URL names (folder, brace pattern, .tar) and its manifest: manifest.json, or plain
              WebDataset tars indexed from their headers (in memory, or written by make_shards.py index)
order.py      which sample each rank and loader worker reads in which order, and resuming it: index
              arithmetic over the manifest's counts (no tar, no DataLoader); LoaderCursor
problems.py   bad samples: their kinds, ProblemLog (counts, rate-limited warnings), the unusable streak
decode.py     a shard sample -> image (and mask) arrays at the target size -> tensors
reader.py     the loaders: train_loader (endless, split across ranks/workers), eval_batches,
              image_batches, check_usable
"""
