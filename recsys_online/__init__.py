"""recsys-online learning core: pure numpy, ids and floats in, scores and lists out."""
