"""Keras QAT model -> TFLite flatbuffer: the converter call verified against training's integers
(:mod:`.converter`), 2-bit LUT compression (:mod:`.lut`), constant channels' biases
(:mod:`.constants`), compaction verified in the runtimes (:mod:`.compact`)."""
