"""Training's machine learning, without Django: the event log and its replay, the splits, the candidate
model, the ranker and the rating model, the evaluation replay, the metrics and the manifest.

Inputs are arrays and plain values; reading events from the database, writing model directories and
registering versions are retraining.services' job. tests/retraining/test_ml_package.py holds that importing
any module here loads no Django."""
