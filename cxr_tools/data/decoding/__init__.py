"""Decoding image files into pixels, three ways that are easy to confuse.

* ``imaging`` (:func:`decode_image`): one file (PNG / JPEG / DICOM ...) to a raw 2-D grayscale array, plus the
  preprocessing steps (:class:`ImageOps`) that turn it into a cached 8-bit square image; ``dicom_pixels`` is its
  DICOM half.
* ``pipeline``: the streaming machinery of ``cxr preprocess`` that runs those steps on chunks of inputs in worker
  processes (:func:`process_chunk`; ``decode_only`` reads files with ``cv2.imread`` alone: the decode-only limit the
  preprocess benchmark compares against).
* ``for_model``: files decoded exactly as a trained model's cache was (its recorded preprocessing), for
  ``cxr predict`` and ``cxr similarity``.
"""
