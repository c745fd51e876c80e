"""Applications built on the layers below: budgets, the four-stage pipeline, the demo."""
