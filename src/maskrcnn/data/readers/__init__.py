"""Reading input files: ``image_io`` (decoded, EXIF-rotated RGB images and header-only sizes) and
``masks`` (COCO polygons / RLE -> binary masks)."""
