"""The legacy compact-CNN X-ray classifier (``models/xray_classifier/1.0.0``), kept runnable apart.

``python -m training.legacy.train_xray_compact`` (``make train-xray-compact``) reproduces 1.0.0:
a compact residual CNN trained from scratch on the whole image (``trainer``, ``models``,
``augment``).  The node's default is 2.0.0 (``training.train_xray``, the lung fields).

Why it is kept rather than retired: the node still serves whole-image classifiers (cards whose
``input.function`` is ``to_model_input``, ``XrayPipeline._whole_image``), 1.0.0 is the only
shipped model of that kind, and a tiny run of this trainer loaded into the node
(``tests/model/test_training.py``) is that path's only end-to-end test; the README keeps 1.0.0
for comparison, and ``tests/model/test_gradcam.py`` builds the compact CNN.  Retire this package
together with 1.0.0 once the node drops whole-image models.

Dependencies point one way: this package uses the shared modules (``data``, ``evaluate``, ``plots``,
``card``, ``provenance``); nothing outside it imports it but the tests named above.  Its
hyper-parameters are ``TrainConfig``'s defaults and command-line options (no ``training/configs``
file); the card records them under ``training``.
"""
