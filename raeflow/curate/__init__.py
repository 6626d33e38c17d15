"""Curating a bucket with its embedding table: a faiss index (`raeflow index`), near-duplicate groups
and outliers (`raeflow dedup`).

    raeflow index --data emb/ --out emb-index/
    raeflow dedup --data emb/ --out dedup/ --threshold 0.95

`table.py` streams and checks the table's parts, `layout.py` chooses the index by size and memory,
`index.py` builds, appends and measures recall, `dedup.py` groups and ranks, `query.py` embeds a new
image for `neighbors --image`, `thumbnails.py` reads thumbnails back from the rows' sources, and
`gallery.py` writes duplicates.html and the neighbors page. Ray-free: everything here runs in the
command's own process, in batches, and never holds an n x n matrix.
"""
