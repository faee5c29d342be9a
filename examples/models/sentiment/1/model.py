"""A custom handler: lexicon sentiment scores for a batch of texts.

Shows the handler API: `load` reads options from config.pbtxt's parameters, `predict`
gets the whole dynamic batch (BYTES inputs as numpy object arrays) and returns one
array per output with the batch as the first dimension.
"""

import re

import numpy as np
import torch

import serving

WORD = re.compile(r"[a-z']+")


class Sentiment(serving.Model):
    def load(self) -> None:
        words = {}
        for sign, key in ((1.0, "positive_words"), (-1.0, "negative_words")):
            for word in self.parameters.get(key, "").split(","):
                if word.strip():
                    words[word.strip()] = sign
        self.words = words

    def predict(self, inputs: dict) -> dict:
        texts = inputs["TEXT"].reshape(-1)
        polarity = torch.tensor(
            [sum(self.words.get(w, 0.0) for w in WORD.findall(t.decode("utf-8", "replace").lower()))
             for t in texts], dtype=torch.float32, device=self.device)
        logits = torch.stack([-polarity, polarity], dim=1)
        scores = torch.softmax(logits, dim=1)
        labels = np.array([[b"positive" if p > 0 else b"negative" if p < 0 else b"neutral"]
                           for p in polarity.tolist()], dtype=object)
        return {"SCORES": scores, "LABEL": labels}
