"""Training data and training: chips, boxes, VOC/COCO, the training loop."""
