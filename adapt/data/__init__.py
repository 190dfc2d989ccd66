"""Training data: readers (COCO, SA-Co), converters, transforms, batches of images with many phrases each."""
