"""Archives -> decoded images -> descriptors -> FAISS index + metadata rows; search; evaluation.

Imports `model`, never `service`.
"""
