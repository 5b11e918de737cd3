"""The only place that wires stages together: ``train`` (:mod:`.train`), ``quantize``
(:mod:`.quantize`), ``convert`` (:mod:`.convert`), ``plan`` (:mod:`.plan`), the size budget
measured on real files (:mod:`.budget`); the stages they share are in :mod:`.stages`."""
