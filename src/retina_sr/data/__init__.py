"""Data stages: download (demo phantoms, local folders, Kaggle EyePACS), preprocess (FOV crop,
resize, split) and patches (degradation model, training crops, test pairs).

Submodules are imported on use (``retina_sr.data.patches.degrade`` etc.) to keep start-up fast.
"""
