"""Privacy accounting: events, Renyi DP and PLD accountants, calibration.

Quick start::

    from privlab.accounting import RDPAccountant, PLDAccountant, GaussianEvent, \\
        PoissonSampledEvent
    step = PoissonSampledEvent(256 / 60000, GaussianEvent(1.1))
    RDPAccountant().compose(step, 14063).get_epsilon_and_order(1e-5)  # (2.597, 8.12)
    PLDAccountant().compose(step, 14063).get_epsilon(1e-5)            # 2.382
"""

from privlab.accounting.accountant import PrivacyAccountant
from privlab.accounting.calibrate import calibrate, calibrate_noise_multiplier, make_accountant
from privlab.accounting.conversion import rdp_to_delta, rdp_to_epsilon
from privlab.accounting.events import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    NoPrivacyEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    RelativeGaussianEvent,
    SelfComposedEvent,
    UnsupportedEventError,
    event_from_dict,
    event_from_json,
    event_to_dict,
    event_to_json,
)
from privlab.accounting.network import (
    gaussian_view_mu,
    gdp_epsilon,
    muffliato_mu,
    muffliato_pairwise_rdp_formula,
    muffliato_view,
    pairwise_network_mu,
    zipdl_view,
)
from privlab.accounting.pld import analytic_gaussian_delta, analytic_gaussian_epsilon
from privlab.accounting.pld_accountant import PLDAccountant
from privlab.accounting.rdp import (
    default_orders,
    laplace_rdp,
    rdp_of_event,
    subsampled_gaussian_rdp,
)
from privlab.accounting.rdp_accountant import RDPAccountant
from privlab.accounting.relative_gaussian import relative_gaussian_rdp


def clear_caches() -> None:
    """Forget cached RDP curves and single-step PLDs (for cold-start timings)."""
    from privlab.accounting import pld, rdp

    rdp._sg_rdp_cached.cache_clear()
    rdp.log_a_mpmath.cache_clear()
    pld.subsampled_gaussian_pld.cache_clear()
    pld.laplace_pld.cache_clear()


__all__ = [
    "clear_caches",
    "PrivacyAccountant",
    "RDPAccountant",
    "PLDAccountant",
    "PrivacyEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "RelativeGaussianEvent",
    "NoPrivacyEvent",
    "NoOpEvent",
    "UnsupportedEventError",
    "event_to_dict",
    "event_from_dict",
    "event_to_json",
    "event_from_json",
    "calibrate",
    "calibrate_noise_multiplier",
    "make_accountant",
    "rdp_to_epsilon",
    "rdp_to_delta",
    "default_orders",
    "subsampled_gaussian_rdp",
    "laplace_rdp",
    "relative_gaussian_rdp",
    "rdp_of_event",
    "analytic_gaussian_delta",
    "analytic_gaussian_epsilon",
    "gaussian_view_mu",
    "gdp_epsilon",
    "muffliato_view",
    "muffliato_mu",
    "zipdl_view",
    "pairwise_network_mu",
    "muffliato_pairwise_rdp_formula",
]
