"""The tiny model's parameter gradients under variants of one model field.

For the tests that check that a faster implementation (conv.py, winograd.py,
pooling.py) trains the same model: same parameters, same images.
"""

import jax
import jax.numpy as jnp

from nin_jax.model import nin


def gradients(config, field, values):
  """Gradients of sum(logits^2) for each `config.model.<field>` value.

  The parameters are initialized by the last variant (the reference), so
  that only the gradients trace the others.
  """
  variants = []
  for value in values:
    config.model[field] = value
    variants.append(nin.create_model(config))
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  params = variants[-1].init(jax.random.key(1), images)['params']

  def loss(params, model):
    return jnp.sum(model.apply({'params': params}, images) ** 2)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  return [grad(params, model) for model in variants]
