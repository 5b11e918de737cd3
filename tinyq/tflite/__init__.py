"""The TFLite flatbuffer: parsing (:mod:`.flatbuffer`), editing (:mod:`.edit`), bit packing
(:mod:`.packing`) and where a file's bytes go (:mod:`.breakdown`). Pure file tools: no Keras,
no runtime."""
