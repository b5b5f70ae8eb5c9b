"""Reusable reasoning heuristics for HARDMath and PHYSICS, shared by the prompting baseline and MI banks.

One text per HARDMath kind and per PHYSICS subject (:data:`HEURISTICS`), one general checklist per benchmark
(:data:`GENERAL`, key :data:`GENERAL_KEY`), three auxiliary texts (:data:`AUXILIARY`: planner, algebra hygiene,
final-answer checker), answer modes ("direct" or "steps") and a router that picks the heuristic for a problem:
"oracle" (the problem's own kind) or "keywords" (classified from the question text only). The keyword router
(:func:`keyword_match`: the best-scoring key and its score) never guesses a type when no keyword rule matches:
:func:`classify` then returns :data:`GENERAL_KEY` and :func:`guidance` uses the benchmark's general checklist,
which names no subject (before, such questions silently got the mechanics or polynomial-roots checklist).
:func:`guidance` bundles the pieces; :meth:`Guidance.prompt_text` is the visible system message of the baseline.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

from memory_inception.datasets.reasoning_problems import Problem
from memory_inception.errors import EvaluationError

logger = logging.getLogger(__name__)

__all__ = [
    "AUXILIARY",
    "DEFAULT_AUX_GAINS",
    "GENERAL",
    "GENERAL_KEY",
    "Guidance",
    "HEURISTICS",
    "KeywordMatch",
    "MODES",
    "MODE_TOKENS",
    "ROUTERS",
    "TIE_ORDER",
    "classify",
    "guidance",
    "keyword_match",
    "mode_instruction",
    "mode_messages",
    "physics_scores",
    "route",
]

HEURISTICS: dict[str, dict[str, str]] = {
    "hardmath": {
        "nondimensionalization_symbolic": (
            "Substitute x = L*y, where L is an unknown length scale. Divide the whole polynomial by the "
            "coefficient of the term that must become 1 (the constant term). Choose L so that the coefficient "
            "of the chosen middle term also becomes exactly 1: solve that equation for L as a power of the "
            "parameters. The remaining coefficient is epsilon: write it as a product of powers of a_1, a_2, a_3 "
            "and simplify the exponents carefully."
        ),
        "nondimensionalization_numeric": (
            "Keep the numeric coefficients symbolic first: call them a_1, a_2, a_3 and take absolute values "
            "for the scaling. Substitute x = L*y, divide by the constant coefficient, and pick L so the "
            "middle term's coefficient becomes 1. Then epsilon = a_1 * L^n / a_3 with n the top degree. "
            "Finally substitute the given numbers, simplify fractional powers, and give epsilon as an exact "
            "expression and a decimal."
        ),
        "polynomial_roots": (
            "Balance dominant terms pairwise. For small epsilon, the epsilon-free terms give the regular "
            "roots; balancing epsilon*x^n against the middle term gives the large singular roots, scaling as a "
            "power of 1/epsilon. For large epsilon, balance epsilon*x^n against the constant: roots scale as "
            "epsilon^(-1/n), and the remaining ones come from the other balance. Take all complex branches of "
            "each root, expand to leading order, and check the count equals the degree."
        ),
        "ODE": (
            "Small x: build a Taylor series about x = 0 from the initial conditions. Evaluate y''' at x = 0 "
            "from the equation, then write y = y(0) + y'(0)x + y''(0)x^2/2 + y'''(0)x^3/6. Large x: find the "
            "dominant balance, usually y''' against the nonlinear power of y'. Try y = alpha*(x0 - x)^p + "
            "beta, which blows up at a finite point x0. Solve for p and alpha, then estimate x0 and state both "
            "regimes."
        ),
        "integral": (
            "Locate where the integrand dominates. For I(x) = int g(t) e^{x f(t)} dt as x -> infinity, use "
            "Laplace's method: find the maximum of f on the interval, either an endpoint (linearise f) or an "
            "interior critical point (Gaussian with f''). Keep the prefactor g at that point. For I(epsilon) "
            "with epsilon + x^n, split the range where the terms balance, x ~ epsilon^(1/n), and give the "
            "leading-order form for small, large and very large epsilon."
        ),
    },
    "physics": {
        "atomic": (
            "Identify the atomic or nuclear process: level structure, transition, fine or hyperfine "
            "splitting, Zeeman or Stark effect, decay or scattering. Use Bohr scaling E_n = -13.6 eV Z^2/n^2, "
            "selection rules (delta l = +-1), Lande g-factors and angular-momentum coupling. Conserve energy, "
            "momentum, charge and nucleon number. Work in eV, nm and MeV with hc = 1240 eV nm and check orders "
            "of magnitude against known atomic values."
        ),
        "electro": (
            "Sketch the charges, currents and fields and pick the symmetry: Gauss's law for symmetric charge, "
            "Ampere's law for symmetric current, image charges for conductors, Faraday's law for changing "
            "flux. Apply boundary conditions at interfaces and conservation of charge and energy. Fix sign "
            "conventions for potential and current direction. Check SI versus Gaussian units, and check the "
            "limits of large distance and zero frequency."
        ),
        "mechanics": (
            "Draw a free-body diagram and choose coordinates and a sign convention. Decide between Newton's "
            "laws and a Lagrangian; use conservation of energy, momentum and angular momentum where they "
            "hold. For small oscillations, expand the potential about equilibrium to get the frequency. For "
            "relativity, use invariants and four-momentum. Check the dimensions of every result and the limits "
            "of zero friction, small angle and low speed."
        ),
        "optics": (
            "Decide whether geometric or wave optics applies. For lenses and mirrors, use 1/u + 1/v = 1/f "
            "with a consistent sign convention and magnification. For interference and diffraction, compute "
            "path differences; use the grating equation d sin(theta) = m lambda and the Rayleigh limit 1.22 "
            "lambda/D. Track the Fresnel coefficients, polarisation and the refractive index in path lengths. "
            "Check dimensions and the limit lambda -> 0."
        ),
        "quantum": (
            "Write the Hamiltonian and identify the exactly solvable model: a well, harmonic oscillator, "
            "hydrogen, or spin in a field. Normalise wave functions and use operator algebra, commutators and "
            "the eigenbasis. For spin and angular momentum, use ladder operators and Clebsch-Gordan "
            "coefficients. For weak perturbations, use first- and second-order perturbation theory or the "
            "variational method. Check hbar factors, units and the classical limit."
        ),
        "statistics": (
            "Identify the ensemble and the relevant potential: U, F = U - TS, G or the grand potential. "
            "Build the partition function, then derive the energy, entropy and heat capacity by "
            "differentiation. Use the correct statistics: Boltzmann, Bose-Einstein or Fermi-Dirac. Apply the "
            "first and second laws, Maxwell relations and the equation of state. Check the limits of high and "
            "low temperature, equipartition, and that entropy never decreases in isolated processes."
        ),
    },
}
"""Process checklist per HARDMath kind and per PHYSICS subject (written for this library)."""

#: The key the keyword router gives a question that no keyword rule matches (see :data:`GENERAL`).
GENERAL_KEY = "general"

GENERAL: dict[str, str] = {
    "hardmath": (
        "Classify the problem first: a polynomial to rescale or to solve approximately, an integral to "
        "approximate, or a differential equation to solve in limits. Identify the small or large parameter "
        "and the regimes that are asked for. In each regime find the dominant balance, keep the leading "
        "term, and state where the approximation holds. Check the result against a direct evaluation at "
        "one point."
    ),
    "physics": (
        "Identify the physical system, the quantities asked for and the principles that govern them. Write "
        "the conservation laws and equations of motion or state that apply, and the boundary or initial "
        "conditions. Solve symbolically, then substitute the given values with their units. Check "
        "dimensions, signs and orders of magnitude, and the limiting cases where the answer is known."
    ),
}
"""General checklist per benchmark, for a question the keyword router cannot place (names no kind or subject)."""

AUXILIARY: dict[str, str] = {
    "planner": (
        "Before computing, restate exactly what is asked and list every requested quantity. Write down the "
        "knowns, the unknowns and any assumptions or limits. Choose a method that fits the problem type and "
        "say why, and outline the steps. Only then start the calculation, and follow the plan unless a step "
        "fails."
    ),
    "algebra": (
        "Keep symbols until the end and substitute numbers only in the final expression. Track signs, factors "
        "of 2 and pi, exponents and powers of ten at every step. Simplify fractions and radicals, combine like "
        "terms, and re-derive any step that looks suspicious. Do not drop terms without saying which limit "
        "justifies it."
    ),
    "checker": (
        "Before answering, check the result. Verify units or dimensions, test limiting and special cases, and "
        "confirm the signs and magnitudes are plausible. Make sure every requested quantity and every regime "
        "is answered. Put the final answer in \\boxed{}, with one box per requested quantity."
    ),
}
"""Auxiliary texts usable with any heuristic: planner, algebra hygiene, final-answer checker."""

DEFAULT_AUX_GAINS: dict[str, float] = {"planner": 0.5, "algebra": 0.5, "checker": 0.75}
"""Default gain of each auxiliary bank relative to the heuristic bank (used by MI)."""

MODES: tuple[str, ...] = ("direct", "steps")
MODE_TOKENS: dict[str, int] = {"direct": 64, "steps": 384}
"""Default generation budgets (new tokens) per answer mode."""

_MODE_INSTRUCTIONS = {
    "direct": "Give only the final answer in \\boxed{}, without any derivation.",
    "steps": "Reason step by step, then give the final answer in \\boxed{}.",
}

ROUTERS: tuple[str, ...] = ("oracle", "keywords")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise EvaluationError(f"unknown answer mode {mode!r}; choose one of {list(MODES)}")


def mode_instruction(mode: str) -> str:
    """The instruction appended to the question for answer mode ``mode`` ("direct" or "steps")."""
    _check_mode(mode)
    return _MODE_INSTRUCTIONS[mode]


def mode_messages(problem: Problem, mode: str) -> list[dict[str, str]]:
    """Chat messages for ``problem``: one user message with the question and the mode instruction."""
    _check_mode(mode)
    return [{"role": "user", "content": f"{problem.question.strip()}\n\n{_MODE_INSTRUCTIONS[mode]}"}]


# -------------------------------------------------------------------------------------- routing

_F = re.IGNORECASE

# HARDMath: the question formats differ in a few structural words, checked in order.
_HARDMATH_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ODE", re.compile(r"differential equation|\bODE\b|y'''|y''|\by'|\\frac\{d\^?\d?y\}\{dx", _F)),
    ("integral", re.compile(r"\bintegral\b|\\int\b|\\int_|\bintegrate\b", _F)),
    ("nondimensionalization", re.compile(r"non-?dimensionali[sz]|dimensionless|rescale", _F)),
    ("polynomial_roots", re.compile(r"\broots?\b|\bpolynomial\b|\bzeros\b", _F)),
)
# Symbolic coefficients (a_1, a_{2}, ...) mark the symbolic nondimensionalization variant.
_SYMBOLIC_COEFF = re.compile(r"\ba_\{?\d\}?|\ba_\{?[ijkn]\}?|function of \$?\\?[a-z]_", _F)

# PHYSICS: weighted keyword scores; the subject with the highest total wins (ties: TIE_ORDER).
_PHYSICS_KEYWORDS: dict[str, tuple[tuple[str, float], ...]] = {
    "electro": (
        (r"electric", 1.0), (r"magnetic", 0.7), (r"\bcharges?\b|\bcharged\b", 1.0), (r"capacit", 2.0),
        (r"\bcurrents?\b", 1.0), (r"\bvoltage|\bvolts?\b|potential difference", 1.0), (r"conduct(or|ing)", 1.0),
        (r"dielectric", 2.0), (r"resist(or|ance)", 1.5), (r"inductan|inductor|solenoid|\bcoil\b", 2.0),
        (r"dipole", 0.7), (r"maxwell|poynting|waveguide|transmission line|coaxial", 2.0), (r"electromagnetic", 1.5),
        (r"vector potential|scalar potential|\\mathbf\{[EB]\}", 1.5), (r"\bradar|\bradio|microwave", 1.0),
        (r"\bgauss'?s? law|ampere|faraday|biot|lorentz force|\bemf\b", 1.5), (r"\bcircuit", 1.5),
        (r"electrostatic|electromagnet", 1.5), (r"\bwire\b|\bloop\b|plates?\b", 0.7), (r"\bantenna", 1.5),
        (r"\bplasma\b|\bion(s|osphere)\b", 0.5), (r"permittivity|permeability|\\epsilon_0|\\mu_0", 1.0),
    ),
    "optics": (
        (r"\blens|\blenses\b", 2.0), (r"interferen|interferometer", 2.0), (r"diffract", 2.0),
        (r"\bslits?\b|grating", 2.0), (r"\bmirror", 1.5), (r"refract|refractive index|\bindex of refraction", 1.5),
        (r"polari[sz]", 1.5), (r"wavelength|\\lambda", 0.7), (r"\blight\b", 1.0), (r"telescope|microscope", 1.5),
        (r"focal|\bfocus", 1.5), (r"\blaser", 1.0), (r"\bfibers?\b|\bfibres?\b", 1.0), (r"\boptic", 1.5),
        (r"\bimage\b|\bimaging\b", 0.7), (r"\bprism|birefring|fresnel|fabry|michelson|brewster", 2.0),
        (r"\bphotons?\b", 0.7), (r"aperture|resol(ution|ve|ved)", 1.0), (r"coheren", 1.5), (r"\bbeams?\b", 0.5),
    ),
    "statistics": (
        (r"temperature|\bkT\b|k_?B ?T|\\beta\b", 1.5), (r"entropy", 2.0), (r"\bgas(es)?\b", 1.5),
        (r"partition function", 3.0), (r"\bheat\b", 1.5), (r"thermodynam|thermal", 2.0),
        (r"free energy|enthalpy|chemical potential", 2.5), (r"\bequilibrium\b", 0.5),
        (r"\bpressure\b", 1.0), (r"\bboltzmann|fermi|bose|einstein condens|black ?body|planck distrib", 1.5),
        (r"\bensemble|canonical|\bmicrostate|\bstatistical", 2.0), (r"specific heat|heat capacity|latent", 2.0),
        (r"\bisotherm|adiabatic|carnot|\bengine\b|\bcycle\b|refrigerat", 1.5), (r"\bmolecules\b|\bmoles?\b", 0.7),
        (r"\bdegrees? kelvin|°|\bK\b", 0.5), (r"\bvapou?r|\bevaporat|\bboil|\bmelt|\bfreez|\bice\b", 1.0),
        (r"\bdiffusion|random walk|fluctuation|mean free path", 1.5), (r"\bparamagnet|\bmagnetization", 0.7),
    ),
    "quantum": (
        (r"schr[öo]dinger|schroedinger", 3.0), (r"wave ?function|\\psi|\\phi_n|\|\s*\\?psi", 2.0),
        (r"\bspin", 1.0), (r"\boperator", 2.0), (r"eigen", 2.0), (r"hamiltonian", 1.5), (r"\\hbar|\bhbar\b", 1.0),
        (r"commutat|\[\s*[a-z]\s*,\s*[a-z]\s*\]", 2.0), (r"perturbation", 1.5), (r"\bpotential (well|barrier)|"
         r"square well|infinite well|harmonic oscillator|delta[- ]function", 2.0), (r"\bquantum", 1.0),
        (r"expectation value|\\langle|\\rangle", 1.5), (r"ground state|excited state|energy level", 0.7),
        (r"tunnel|transmission coefficient|reflection coefficient", 1.0), (r"angular momentum", 0.7),
        (r"\bbound states?|\bscattering|phase shift|born approximation", 1.0), (r"variational|WKB", 2.0),
        (r"\bpauli|matri(x|ces)\b|\bket\b|\bbra\b|clebsch", 1.0), (r"\bparticle of mass|\bin one dimension", 1.0),
    ),
    "atomic": (
        (r"\batom(s|ic)?\b", 1.5), (r"hydrogen", 1.0), (r"nucle(us|i|ar|on|ons)\b", 2.0),
        (r"\belectron transition|\btransitions?\b", 1.0), (r"zeeman|stark|hyperfine|fine structure|lamb shift", 2.5),
        (r"\bspectr(um|a|al|oscopy)|\bspectral line|\blines?\b", 0.7), (r"\bx-?rays?\b|\bauger|\bmoseley", 1.5),
        (r"\bdecay|radioactiv|\bfission|\bfusion|\bisotope|half-?life|\balpha particles?|\bbeta decay", 2.0),
        (r"\bneutrons?\b|\bprotons?\b|\bdeuter|\bneutrino|\bmeson|\bpions?\b|\bmuons?\b", 1.5),
        (r"\bionization|ionizing|\bphotoioniz|\bbohr\b|rydberg|\blyman|\bbalmer", 2.0),
        (r"\bmolecul(e|ar)\b", 0.7), (r"\borbital|\bshell\b|\bterm symbol|\b\d[SPDF]_?\{?\d", 1.0),
        (r"\bmev\b|\bkev\b|\bev\b", 1.0), (r"\bcross[- ]section", 1.0),
        (r"\bsodium|\bhelium|\blithium|\bpositron", 1.0),
        (r"land[eé]|g-factor|magnetic moment", 1.0), (r"\bmaser|stimulated emission|einstein coefficient", 1.5),
    ),
    "mechanics": (
        (r"\bmass\b", 0.5), (r"friction", 2.0), (r"\bforce", 0.7), (r"velocity|\bspeed\b", 0.5),
        (r"lagrangian|hamilton'?s equations", 1.5), (r"pendulum|spring|oscillat", 1.0), (r"\borbit|planet|satellite|"
         r"gravit|kepler", 1.5), (r"\brotat|\btorque|moment of inertia|\bangular velocity", 1.5),
        (r"rigid body|\bdisk\b|\bsphere|\bcylinder|\brod\b|\bbead\b|\bblock\b|\bincline", 1.0),
        (r"relativ|lorentz transform|reference frame|rest frame|\bframe\b", 1.5), (r"collision|elastic|\brecoil", 1.0),
        (r"\bfluid|viscos|\bbuoyan|\bfloat|\bwater\b", 0.7), (r"\brope|\bstring\b|\btension\b|\bpulley", 1.5),
        (r"\bprojectile|\bthrown|\blaunch|\brocket|\bacceleration", 1.0),
        (r"central force|\bcentrifugal|coriolis", 2.0),
        (r"normal modes?|small oscillations|\bequations? of motion", 1.5),
    ),
}
_PHYSICS_PATTERNS: dict[str, tuple[tuple[re.Pattern[str], float], ...]] = {
    subject: tuple((re.compile(p, _F), w) for p, w in rules) for subject, rules in _PHYSICS_KEYWORDS.items()
}


@dataclass(frozen=True)
class KeywordMatch:
    """What the keyword router found in a question: the best-scoring key (None when no keyword rule matched),
    its score, and every key's score.

    HARDMath rules are ordered (the first matching rule wins, score 1); PHYSICS scores are summed keyword
    weights per subject, ties resolved in :data:`TIE_ORDER`.
    """

    key: str | None
    score: float
    scores: dict[str, float]


#: The order that resolves PHYSICS score ties: the more specific subjects first, mechanics last.
TIE_ORDER: tuple[str, ...] = ("atomic", "quantum", "statistics", "optics", "electro", "mechanics")


def _match_hardmath(question: str) -> KeywordMatch:
    scores = {k: 0.0 for k in HEURISTICS["hardmath"]}
    for key, pattern in _HARDMATH_RULES:
        if pattern.search(question):
            if key == "nondimensionalization":
                symbolic = bool(_SYMBOLIC_COEFF.search(question))
                key = "nondimensionalization_symbolic" if symbolic else "nondimensionalization_numeric"
            scores[key] = 1.0
            return KeywordMatch(key, 1.0, scores)
    return KeywordMatch(None, 0.0, scores)


def physics_scores(question: str) -> dict[str, float]:
    """Keyword score per PHYSICS subject (sum of weights of distinct keyword rules that match)."""
    return {s: sum(w for p, w in rules if p.search(question)) for s, rules in _PHYSICS_PATTERNS.items()}


def _match_physics(question: str) -> KeywordMatch:
    scores = physics_scores(question)
    best = max(scores.values())
    if best <= 0:
        return KeywordMatch(None, 0.0, scores)
    return KeywordMatch(next(s for s in TIE_ORDER if scores[s] == best), best, scores)


def _check_question(question: str, benchmark: str, what: str) -> None:
    if benchmark not in HEURISTICS:
        raise EvaluationError(f"unknown benchmark {benchmark!r} for {what}; choose one of {list(HEURISTICS)}")
    if not isinstance(question, str):
        raise EvaluationError(f"{what} needs the question text as str, got {type(question).__name__}")


def keyword_match(question: str, benchmark: str) -> KeywordMatch:
    """The keyword router's finding for ``question`` of ``benchmark``: best key and score, or key None."""
    _check_question(question, benchmark, "keyword_match")
    return _match_hardmath(question) if benchmark == "hardmath" else _match_physics(question)


def classify(question: str, benchmark: str) -> str:
    """Heuristic key for ``question`` of ``benchmark`` ("hardmath" or "physics"), from keywords only.

    The best-scoring key (:func:`keyword_match`), or :data:`GENERAL_KEY` when no keyword rule matches (logged at
    info level): the question's type is then unknown, and :func:`guidance` gives the benchmark's general checklist.
    """
    _check_question(question, benchmark, "classify")
    found = keyword_match(question, benchmark)
    if found.key is None:
        logger.info("no %s keyword matches %r; routed to the general checklist", benchmark, question[:80])
        return GENERAL_KEY
    return found.key


def route(problem: Problem, how: str = "oracle") -> str:
    """Heuristic key for ``problem``: its own kind ("oracle") or the keyword classifier ("keywords").

    Keyword routing gives :data:`GENERAL_KEY` for a question that no keyword rule matches (see :func:`classify`).
    """
    if problem.benchmark not in HEURISTICS:
        raise EvaluationError(
            f"problem {problem.id!r} has unknown benchmark {problem.benchmark!r}; expected one of {list(HEURISTICS)}"
        )
    if how == "oracle":
        if problem.kind not in HEURISTICS[problem.benchmark]:
            raise EvaluationError(
                f"problem {problem.id!r} has kind {problem.kind!r} without a heuristic; "
                f"expected one of {list(HEURISTICS[problem.benchmark])}, or route with how='keywords'"
            )
        return problem.kind
    if how == "keywords":
        return classify(problem.question, problem.benchmark)
    raise EvaluationError(f"unknown router how={how!r} for problem {problem.id!r}; choose one of {list(ROUTERS)}")


# ------------------------------------------------------------------------------------- guidance


@dataclass(frozen=True)
class Guidance:
    """The heuristic chosen for one problem plus the auxiliary texts with their MI gains."""

    key: str
    heuristic: str
    auxiliary: tuple[tuple[str, str, float], ...] = ()  # (name, text, gain)

    def prompt_text(self) -> str:
        """One visible system message: the heuristic first, then each auxiliary text in order."""
        return "\n\n".join([self.heuristic, *(text for _, text, _ in self.auxiliary)])


def guidance(
    problem: Problem, how: str = "oracle", auxiliary: Sequence[str] = ("planner", "algebra", "checker")
) -> Guidance:
    """Route ``problem`` to its heuristic and attach the named auxiliary texts with default gains."""
    if isinstance(auxiliary, str):
        raise EvaluationError(
            f"auxiliary must be a sequence of names, not the string {auxiliary!r} (problem {problem.id!r}); "
            f"e.g. ({auxiliary!r},)"
        )
    unknown = [a for a in auxiliary if a not in AUXILIARY]
    if unknown:
        raise EvaluationError(
            f"unknown auxiliary text(s) {unknown} for problem {problem.id!r}; choose from {list(AUXILIARY)}"
        )
    key = route(problem, how)
    aux = tuple((name, AUXILIARY[name], DEFAULT_AUX_GAINS[name]) for name in auxiliary)
    text = GENERAL[problem.benchmark] if key == GENERAL_KEY else HEURISTICS[problem.benchmark][key]
    return Guidance(key=key, heuristic=text, auxiliary=aux)
