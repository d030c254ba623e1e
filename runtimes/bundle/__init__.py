"""The bundle format: its layout, manifest, ownership rules and verified opening, in one place.

Every command and the runtime ask these modules what a bundle is; none decides it on its own:

- ``layout``: every file name, graph key, precision and the engines folder, defined once;
- ``manifest``: the typed manifest, every number and string bounded, read only through
  ``read_manifest`` (``json_io`` bounds the JSON itself);
- ``paths``: every path a bundle names confined to it;
- ``ownership``: which files are ours (the manifest's list and the engines ``trt`` recorded), a pure
  function of the folder's tree that ``onnx --force``, ``demo`` and ``calibrate`` ask;
- ``swap``: a folder replaced atomically, and an interrupted replacement finished by the next writer
  (readers change nothing);
- ``verified``: the bytes a runtime runs are the bytes whose checksum it verified;
- ``tokenizers``: the tokenizer kinds, each with its files, fields, bounds and reader;
- ``outputs``: what every graph run must return;
- ``pack``: a device bundle with only the precisions and graphs a device runs (``rada-export pack``).
"""
