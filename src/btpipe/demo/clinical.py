"""Clinical truth of the demo: age, and survival drawn from a known hazard.

Proportional hazards with a Weibull baseline:

    h(t | x) = h0(t) * exp(eta),
    eta = b_age * (age - 60) / 10
        + b_wt  * ln(WT_cm3 / 50)
        + b_ncr * (NCR_volume / TC_volume - 0.3)
    h0(t) = (k / lam) * (t / lam)^(k - 1),  median survival at eta = 0: MEDIAN_DAYS

with independent uniform censoring. The coefficients are module constants
so that a survival model fitted on the demo can be checked against them;
the C-index of eta itself is about 0.73 on a large sample (24 subjects
scatter widely around that). Extent of resection is drawn for realism only
and has no effect on the hazard.
"""

from __future__ import annotations

import numpy as np

TRUE_COEFFICIENTS = {
    "age_per_decade": 0.7,        # per 10 years above 60
    "log_wt_volume": 0.8,         # per unit of ln(whole-tumour volume / 50 cm^3)
    "necrosis_fraction": 2.5,     # per unit of NCR / TC volume fraction (centred at 0.3)
}
WEIBULL_SHAPE = 1.6
MEDIAN_DAYS = 426.0               # 14 months (30.44-day months) at eta = 0
CENSOR_DAYS = (30.0, 2200.0)      # independent censoring time, uniform: ~25 % censored
AGE_RANGE = (30.0, 85.0)
RESECTION = (("GTR", 0.5), ("STR", 0.3), ("NA", 0.2))


def features(age: float, volumes_mm3: dict) -> dict:
    """The covariates of the true hazard, from age and tumour volumes (mm^3)."""
    tc = max(volumes_mm3["TC"], 1.0)
    return {"age_per_decade": (age - 60.0) / 10.0,
            "log_wt_volume": float(np.log(max(volumes_mm3["WT"], 1.0) / 50_000.0)),
            "necrosis_fraction": volumes_mm3["NCR"] / tc - 0.3}


def linear_predictor(feats: dict) -> float:
    return float(sum(TRUE_COEFFICIENTS[k] * feats[k] for k in TRUE_COEFFICIENTS))


def draw_clinical(rng: np.random.Generator, volumes_mm3: dict) -> dict:
    """Age, sex, weight, resection, and (survival_days, event) from the true hazard.

    volumes_mm3: the tumour's design volumes (keys NCR, TC, WT), in the
    subject's millimetres.
    """
    age = float(np.round(np.clip(rng.normal(60.0, 12.0), *AGE_RANGE), 1))
    sex = "F" if rng.random() < 0.4 else "M"
    weight = float(np.round(rng.normal(78.0 if sex == "M" else 66.0, 11.0), 1))
    names, probs = zip(*RESECTION)
    resection = str(rng.choice(names, p=probs))
    feats = features(age, volumes_mm3)
    eta = linear_predictor(feats)
    scale = MEDIAN_DAYS / np.log(2.0) ** (1.0 / WEIBULL_SHAPE)
    event_time = float(scale * (-np.log(rng.random()) / np.exp(eta)) ** (1.0 / WEIBULL_SHAPE))
    censor_time = float(rng.uniform(*CENSOR_DAYS))
    event = int(event_time <= censor_time)
    days = max(1, int(round(min(event_time, censor_time))))
    return {"age": age, "sex": sex, "weight_kg": weight, "extent_of_resection": resection,
            "features": feats, "linear_predictor": eta, "event_time_days": event_time,
            "censor_time_days": censor_time, "survival_days": days, "event": event}
