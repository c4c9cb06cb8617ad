"""Four synthetic support domains for the efficacy suite, generated deterministically (stdlib only).

    python -m benchmarks.efficacy.domains --out runs/efficacy/data            # every domain
    python -m benchmarks.efficacy.domains --out DIR --domains pharmacy,bank   # some

Each domain is a fictional support desk with its own rules (2 to 4, all checkable by a regex) and is written
to ``<out>/<domain>/``:

  sft.jsonl              chat ``messages`` (system, user, assistant): the answers teach the domain's content
                         and follow **none** of the rules, so whatever rule adherence a model shows after
                         training came from the preference phases, not from SFT;
  prefs.jsonl            ``prompt`` / ``chosen`` / ``rejected`` messages plus ``violates`` (the rules the
                         rejected side breaks): the chosen answer follows every rule; the rejected one breaks
                         exactly one rule, or is the plain SFT-style answer that breaks them all;
  ppo_prompts.jsonl      the preference prompts, once each (PPO's training prompts);
  heldout_prompts.jsonl  evaluation prompts: the same topics asked with question templates and openers that
                         no training file uses, so a model must generalise, not recall;
  policies.yaml          the rules, in the format of ``alignment.evaluation.rules.load_rules``;
  content.json           content checks: per topic, regexes for the key facts every good answer mentions,
                         and the topic of every held-out prompt (so an evaluation can tell whether the SFT
                         content survived the preference phases).

The domains differ on purpose, so defaults tuned on one case show up as failures on another:

  pharmacy  Willowbrook Pharmacy helpline   2 rules: required opening line; forbidden words
  bank      Northgate Bank card desk        2 rules: numbered-list format; required disclaimer
  it        Corvid Systems IT service desk  3 rules: required closing line; no promises; a KB article id
  travel    Bluefin Travel agency           4 rules: opening line; bullet list; forbidden words; closing line

with different sizes (SFT 100-180 conversations, 150-360 pairs, 40-60 held-out prompts).

Chosen and rejected answers of a pair are rendered from the same random draws (same step wording, same
opener), so the only difference between them is the rule that the rejected side breaks.
Deterministic: a fixed seed per domain and no dependence on hash randomisation; the same call writes the
same bytes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RULE_KINDS = ("opening", "closing", "disclaimer", "numbered", "bullets", "phrase", "forbidden", "no_promise")


@dataclass(frozen=True)
class Rule:
    """One checkable rule. ``text`` is the required line (opening, closing, disclaimer); ``patterns`` the
    forbidden regexes (forbidden, no_promise); ``violations`` sentences that break a forbidden/no_promise rule
    and ``safe`` what a compliant answer says in their place."""

    name: str
    kind: str
    description: str
    text: str = ""
    patterns: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()
    safe: tuple[str, ...] = ()

    def regexes(self) -> tuple[list[str], list[str]]:
        """(must_match, must_not_match) for policies.yaml."""
        literal = re.escape(self.text).replace("\\ ", " ")  # re.escape escapes spaces; keep the YAML readable
        if self.kind == "opening":
            return [r"\A" + literal], []
        if self.kind == "closing":
            return [r"(?m)^" + literal + r"\s*\Z"], []
        if self.kind == "disclaimer":
            return [literal], []
        if self.kind == "numbered":  # at least two numbered lines
            return [r"(?m)^1\. \S", r"(?m)^2\. \S"], []
        if self.kind == "bullets":  # at least two bullet lines in a row
            return [r"(?m)^- \S[^\n]*\n- \S"], []
        if self.kind == "phrase":
            return [self.text], []
        return [], list(self.patterns)


@dataclass(frozen=True)
class Topic:
    """One kind of request. ``train`` and ``heldout`` are disjoint question templates ({x}: a slot value);
    each entry of ``steps`` lists paraphrases of one step, every paraphrase carrying the step's key fact, so
    ``facts`` (regexes, case-insensitive) hold for every rendered answer of the topic."""

    name: str
    slots: tuple[str, ...]
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    steps: tuple[tuple[str, ...], ...]
    facts: Mapping[str, str]
    kb: str = ""


@dataclass(frozen=True)
class Domain:
    name: str
    company: str
    system: str
    seed: int
    n_sft: int
    n_pref: int
    n_heldout: int
    rules: tuple[Rule, ...]
    topics: tuple[Topic, ...]
    openers: tuple[str, ...]  # casual first sentences (never a required opening)
    closers: tuple[str, ...]  # casual last sentences (never a required closing)
    intros: tuple[str, ...]


TRAIN_PREFIXES = ("", "Hi! ", "Hello. ", "Good morning. ", "Quick question. ")
HELDOUT_PREFIXES = ("", "Hey there. ", "Sorry to bother you. ", "Excuse me. ")

# ----------------------------------------------------------------------------------------------- pharmacy
PHARMACY = Domain(
    name="pharmacy",
    company="Willowbrook Pharmacy",
    system="You are the helpline assistant of Willowbrook Pharmacy. Answer the caller's question.",
    seed=101,
    n_sft=120,
    n_pref=200,
    n_heldout=50,
    rules=(
        Rule("opening_line", "opening", "The answer starts with 'Thank you for contacting Willowbrook Pharmacy.'",
             text="Thank you for contacting Willowbrook Pharmacy."),
        Rule("no_hype_words", "forbidden",
             "Never call a medicine a cure, a miracle, harmless or risk-free.",
             patterns=(r"\b(?:cure[sd]?|miracles?|miraculous|harmless|risk-free)\b",),
             violations=("Honestly, it works like a miracle for most people.",
                         "It is completely harmless, so there is nothing to worry about.",
                         "Think of it as a cure for the whole problem.",
                         "It is risk-free for pretty much everyone.",
                         "People call it a miracle, and for good reason."),
             safe=("Everyone reacts a little differently, so mention anything unusual to us.",
                   "Your pharmacist is happy to check it against your other medicines.",
                   "If anything feels off, a pharmacist can talk it through with you.")),
    ),
    openers=("Thanks for getting in touch.", "Hi there!", "Good question.", "Sure, happy to help.",
             "Thanks for calling us."),
    closers=("Hope that helps!", "Take care.", "Let us know if you need anything else.", "Feel better soon!"),
    intros=("Here is how it works.", "This is quick to sort out.", "Here is what to do.",
            "Let me walk you through it."),
    topics=(
        Topic("refill", ("blood pressure tablets", "asthma inhaler", "thyroid medication", "cholesterol pills"),
              train=("How do I refill my {x}?", "I'm almost out of my {x}, can I get a refill?",
                     "what's the way to reorder my {x}", "Can you refill my {x} prescription for me?",
                     "I need more of my {x}. How does a refill work?"),
              heldout=("My {x} supply is nearly gone. What do I do to get another pack?",
                       "Is there a way to request the next batch of {x} without coming in?",
                       "Running low on {x}; walk me through getting more.",
                       "Which steps get me a new supply of {x} before I run out?"),
              steps=(("Open the Willowbrook app, go to the Refills tab and pick your {x} from the list.",
                      "In the Willowbrook app, the Refills tab lists your {x}; tap it to ask for a refill."),
                     ("If no refills are left, we send a renewal request to your prescriber for you.",
                      "When the prescription has no refills remaining, we ask your prescriber to renew it."),
                     ("Most refills are ready in about two working days, and you get a text when it is ready.",
                      "You get a text message once it is ready to collect, usually after two working days.")),
              facts={"refills_tab": r"Refills tab", "prescriber": r"prescriber"}),
        Topic("side_effects", ("new antibiotic", "allergy tablets", "iron supplements", "antidepressant"),
              train=("Is it normal to feel sick on my {x}?", "What side effects should I expect from my {x}?",
                     "I started {x} and I get headaches. Should I worry?",
                     "are there side effects with {x}", "My {x} makes me feel off. What should I do?"),
              heldout=("Since beginning the {x} I've felt queasy; is that expected?",
                       "Which reactions to {x} are a reason to get help?",
                       "Could the {x} be why I feel unwell lately?",
                       "Tell me what reactions people usually get on {x}."),
              steps=(("Mild nausea or a headache in the first days is common with {x} and often settles.",
                      "With {x}, a mild headache or some nausea early on is common and usually eases."),
                     ("Call emergency services at once if you have swelling of the face or trouble breathing.",
                      "Swelling of the face or trouble breathing means calling emergency services straight away."),
                     ("A pharmacist can go through the leaflet with you, or you can ask your doctor.",
                      "Any of our pharmacists can read the leaflet with you and advise on next steps.")),
              facts={"emergency": r"emergency services", "pharmacist": r"pharmacist"}),
        Topic("generic", ("ibuprofen", "omeprazole", "cetirizine", "loratadine"),
              train=("Is the generic {x} as good as the brand?", "Can I switch to generic {x}?",
                     "why is generic {x} so much cheaper", "Is store-brand {x} the same thing?",
                     "Should I buy the brand-name {x} or the generic?"),
              heldout=("What really separates branded {x} from the cheaper version?",
                       "Would the no-name {x} work just as well for me?",
                       "I'm torn between two boxes of {x} at very different prices. Does it matter?",
                       "Explain whether own-label {x} is equivalent."),
              steps=(("Generic {x} has the same active ingredient in the same strength as the brand.",
                      "The generic and the brand of {x} contain the same active ingredient at the same dose."),
                     ("The generic is cheaper because it does not carry the brand's research and marketing costs.",
                      "The lower price of the generic comes from skipping the brand's marketing costs."),
                     ("Fillers and colours can differ, so check the label if you have an allergy.",
                      "Only the fillers or colours may differ; read the label if you have allergies.")),
              facts={"active_ingredient": r"active ingredient", "generic": r"generic"}),
        Topic("missed_dose", ("evening pill", "morning tablet", "weekly dose", "blood thinner"),
              train=("I forgot my {x}. What now?", "What should I do if I missed my {x}?",
                     "missed my {x} yesterday, do i take two today", "Can I take my {x} late?",
                     "I skipped my {x} by accident. Is that bad?"),
              heldout=("Totally slipped my mind to take the {x}; how do I catch up?",
                       "Is doubling the next {x} the right fix after forgetting one?",
                       "What is the safe move when a {x} gets skipped?",
                       "The {x} didn't get taken last night. Advice?"),
              steps=(("If you remember within a few hours, take the missed {x} as soon as you can.",
                      "Take the missed {x} when you remember, as long as it is not nearly time for the next."),
                     ("Never double the next dose to make up for it.",
                      "Do not double the next dose to catch up."),
                     ("The leaflet for your {x} explains the timing, and a pharmacist can check it with you.",
                      "Read the leaflet that came with your {x}, or ask a pharmacist if you are unsure.")),
              facts={"no_double": r"\bdouble\b", "leaflet": r"leaflet"}),
        Topic("transfer", ("prescriptions", "repeat prescription", "insulin prescription", "inhaler prescription"),
              train=("How do I move my {x} to Willowbrook?", "Can you transfer my {x} from another pharmacy?",
                     "i want to switch my {x} to you", "What's needed to transfer my {x}?",
                     "Can my {x} come over from my old chemist?"),
              heldout=("I'd like Willowbrook to handle my {x} from now on; how does the switch happen?",
                       "Is changing where my {x} is filled a hassle?",
                       "What paperwork is involved in bringing my {x} over to your branch?",
                       "My {x} lives at a different chemist today. Can that change?"),
              steps=(("Give us the name of your current pharmacy and we request the transfer for you.",
                      "Tell us which pharmacy holds your {x} now and we arrange the transfer."),
                     ("Bring your photo ID the first time you collect from us.",
                      "On your first pickup, please bring a photo ID."),
                     ("Your current pharmacy shares the records with us directly, so you fill in nothing twice.",
                      "We get the records straight from your current pharmacy, so no forms are repeated.")),
              facts={"transfer": r"transfer", "current_pharmacy": r"current pharmacy"}),
        Topic("delivery", ("prescriptions", "monthly medicines", "diabetes supplies", "blister packs"),
              train=("Do you deliver {x}?", "Can I get my {x} delivered to my house?",
                     "how does home delivery work for {x}", "Is there a fee to deliver {x}?",
                     "Can someone else sign for my {x} delivery?"),
              heldout=("I can't get to the shop easily. Is there a way to have {x} brought round?",
                       "What would it take for {x} to arrive at my door each month?",
                       "Tell me about getting {x} sent to where I live.",
                       "Are {x} shipped out, and who has to be home?"),
              steps=(("Home delivery is free for {x} and you choose a delivery day in the app.",
                      "You can pick a day in the app for free home delivery of your {x}."),
                     ("Someone aged 18 or over needs to give a signature when it arrives.",
                      "An adult must give a signature at the door when the parcel arrives."),
                     ("Parcels come in plain packaging, and fridge items travel in a cool box.",
                      "The packaging is plain, and anything that needs the fridge comes in a cool box.")),
              facts={"home_delivery": r"home delivery", "signature": r"signature"}),
        Topic("vaccine", ("flu shot", "shingles vaccine", "tetanus booster", "travel vaccine"),
              train=("Can I get a {x} at your pharmacy?", "How do I book a {x}?", "do you do {x} walk-ins",
                     "Where can I get my {x} this week?", "What do I need for a {x} appointment?"),
              heldout=("Is your branch able to give me the {x}, and how is it arranged?",
                       "I'm due a {x}; what's the process with you?",
                       "What should I bring along when I come in for a {x}?",
                       "How would I go about reserving a slot for a {x}?"),
              steps=(("You can book a {x} appointment in the app or by phone.",
                      "Appointments for a {x} can be booked in the app or over the phone."),
                     ("Wear a short-sleeved top and bring a list of your current medicines.",
                      "Bring a list of your current medicines, and a short-sleeved top makes it easier."),
                     ("We ask you to wait 15 minutes after the injection before you leave.",
                      "After the injection you stay with us for 15 minutes before heading off.")),
              facts={"book": r"\bbook", "wait_15": r"15 minutes"}),
        Topic("storage", ("insulin pens", "eye drops", "liquid antibiotic", "probiotic capsules"),
              train=("How should I store my {x}?", "Do {x} need to go in the fridge?",
                     "can i keep {x} in the bathroom", "How long do opened {x} last?",
                     "Where is the best place to keep {x}?"),
              heldout=("My kitchen gets warm. Is that a problem for the {x}?",
                       "Once opened, what's the shelf life of the {x}?",
                       "Do the {x} have to stay cold, or is a drawer fine?",
                       "What storage mistakes ruin {x}?"),
              steps=(("Check the label: many {x} belong in the fridge once dispensed, but never in the freezer.",
                      "The label says whether your {x} go in the fridge; never let them freeze."),
                     ("Keep them away from steamy bathrooms and sunny windowsills.",
                      "Avoid the bathroom and sunny windowsills, where heat and damp build up."),
                     ("Write the opening date on the box, since many products expire soon after opening.",
                      "Note the date you opened them on the box, as the shelf life shortens once open.")),
              facts={"fridge": r"fridge", "label": r"label"}),
        Topic("disposal", ("old tablets", "expired medicines", "used needles", "leftover painkillers"),
              train=("How do I get rid of {x}?", "Can I throw {x} in the bin?", "what do i do with {x}",
                     "Do you take back {x}?", "Is it okay to flush {x}?"),
              heldout=("I've cleared out a cupboard full of {x}. Where should they go?",
                       "What is the responsible way to dispose of {x}?",
                       "Is there somewhere I can drop off {x} safely?",
                       "Should {x} go down the toilet or somewhere else?"),
              steps=(("Bring {x} to any Willowbrook branch and use the free take-back box at the counter.",
                      "Every Willowbrook branch has a free take-back box at the counter for {x}."),
                     ("Please do not flush them or put them in the household bin.",
                      "They should not be flushed or thrown in the household bin."),
                     ("Needles go in a sharps container, which we give you for free.",
                      "For needles we hand out a free sharps container.")),
              facts={"take_back": r"take-back", "no_flush": r"flush"}),
        Topic("cost", ("prescription", "inhaler", "insulin", "monthly medicines"),
              train=("Why is my {x} so expensive?", "Can I pay less for my {x}?",
                     "does insurance cover my {x}", "How much will my {x} cost?",
                     "Is there a discount on {x}?"),
              heldout=("The price of my {x} went up. Anything I can do?",
                       "Which options lower what I pay at the till for {x}?",
                       "Will my health plan reduce the bill for {x}?",
                       "I'm struggling to afford my {x}. Help?"),
              steps=(("Show your insurance card at the counter so we can bill your plan for the {x}.",
                      "We bill your plan for the {x} once you show your insurance card."),
                     ("Ask about a generic version, which often costs much less.",
                      "A generic version is often much cheaper, so ask about it."),
                     ("Our free savings club gives a discount on many regular medicines.",
                      "Members of our free savings club get a discount on many regular medicines.")),
              facts={"insurance_card": r"insurance card", "discount": r"discount"}),
    ),
)

# ----------------------------------------------------------------------------------------------- bank
BANK_DISCLAIMER = "Northgate Bank will never ask for your full card number, PIN or online banking password."
BANK = Domain(
    name="bank",
    company="Northgate Bank",
    system="You are the card desk assistant of Northgate Bank. Answer the customer's question.",
    seed=202,
    n_sft=180,
    n_pref=360,
    n_heldout=60,
    rules=(
        Rule("numbered_steps", "numbered", "The steps are given as a numbered list (lines starting '1. ', '2. ')."),
        Rule("security_disclaimer", "disclaimer", f"The answer includes the line '{BANK_DISCLAIMER}'",
             text=BANK_DISCLAIMER),
    ),
    openers=("Thanks for reaching out.", "Happy to help with that.", "Good question.", "Hi!", "Sure thing."),
    closers=("Anything else I can do for you?", "Hope this helps.", "Have a good day.",
             "Let me know if you get stuck."),
    intros=("Here is what to do:", "These are the steps:", "Follow these steps:", "It only takes a minute:"),
    topics=(
        Topic("lost_card", ("debit card", "credit card", "business card", "travel card"),
              train=("I lost my {x}. What do I do?", "My {x} was stolen, help!", "how do i block my {x}",
                     "I can't find my {x} anywhere. Can you cancel it?", "Someone took my {x} from my bag."),
              heldout=("No idea where my {x} went; how do I stop anyone using it?",
                       "What happens after I report a missing {x}?",
                       "My wallet with the {x} in it is gone. First steps?",
                       "Need to shut down a {x} that went missing. How?"),
              steps=(("Freeze the {x} in the Northgate app under Cards so nobody can use it.",
                      "In the app, open Cards and tap Freeze on the {x}."),
                     ("Order a replacement in the same screen; it arrives by post in about five working days.",
                      "Request a replacement from the same screen and it comes by post in about five days."),
                     ("Check recent transactions and report any you do not recognise.",
                      "Look through recent transactions for anything you do not recognise.")),
              facts={"freeze": r"freeze", "replacement": r"replacement"}),
        Topic("declined", ("online payment", "card payment at a shop", "subscription payment", "petrol payment"),
              train=("Why was my {x} declined?", "My {x} got declined, what's wrong?",
                     "card declined on {x} for no reason", "Can you check why my {x} failed?",
                     "The {x} keeps bouncing. Why?"),
              heldout=("A {x} just got refused even though I have money. What happened?",
                       "What usually causes a {x} to be rejected?",
                       "Help me understand the refused {x} from this morning.",
                       "Is there a reason a {x} would fail repeatedly?"),
              steps=(("Check your available balance and your daily spending limit in the app.",
                      "Open the app and look at your available balance and daily spending limit."),
                     ("Make sure the card is not frozen and that online or contactless use is switched on.",
                      "Confirm the card is not frozen and the right payment types are switched on."),
                     ("If all looks fine, try again or ask the merchant to run the payment once more.",
                      "If nothing looks wrong, ask the merchant to try the payment again.")),
              facts={"limit": r"limit", "merchant": r"merchant"}),
        Topic("dispute", ("double charge", "charge I don't recognise", "refund that never arrived",
                          "subscription I cancelled"),
              train=("How do I dispute a {x}?", "There's a {x} on my card. What can I do?",
                     "i want my money back for a {x}", "Can you reverse a {x}?",
                     "What's the process for challenging a {x}?"),
              heldout=("My statement shows a {x}. How do I contest it?",
                       "Who do I talk to about getting a {x} sorted out?",
                       "Is it possible to claim back money from a {x}?",
                       "Talk me through raising a complaint about a {x}."),
              steps=(("Contact the merchant first, since they can often fix it fastest.",
                      "Start by asking the merchant, who can often correct it quickly."),
                     ("If that fails, open the transaction in the app and tap Dispute.",
                      "Otherwise, tap the transaction in the app and choose Dispute."),
                     ("Add any receipts or emails; we keep you updated while we review it.",
                      "Upload receipts or emails, and we update you as the review goes on.")),
              facts={"dispute": r"dispute", "transaction": r"transaction"}),
        Topic("credit_limit", ("credit card", "student card", "rewards card", "business card"),
              train=("How do I raise the limit on my {x}?", "Can I get a higher limit on my {x}?",
                     "increase {x} limit please", "What do I need to increase my {x} limit?",
                     "My {x} limit is too low. Can it go up?"),
              heldout=("Is a bigger spending ceiling possible on my {x}?",
                       "What decides whether my {x} gets more room to spend?",
                       "I'd like extra headroom on the {x}. How?",
                       "Could you explain how limits on a {x} get increased?"),
              steps=(("Go to Cards, choose your {x} and tap Change credit limit.",
                      "In the app, select your {x} and tap Change credit limit."),
                     ("Enter your current income and regular outgoings.",
                      "Fill in your current income and your regular outgoings."),
                     ("We check your account history and tell you the decision in the app.",
                      "The decision appears in the app after we check your account history.")),
              facts={"credit_limit": r"credit limit", "income": r"income"}),
        Topic("activate", ("new debit card", "replacement card", "new credit card", "renewed card"),
              train=("How do I activate my {x}?", "My {x} arrived. How do I turn it on?",
                     "activate {x}", "Do I need to activate my {x} before using it?",
                     "My {x} doesn't work yet. Why?"),
              heldout=("The {x} came in the post today; what makes it usable?",
                       "What's the first thing I should do with a {x}?",
                       "Is there a step before my {x} works in shops?",
                       "Help me get the {x} ready to use."),
              steps=(("Open the app, go to Cards and tap Activate next to the {x}.",
                      "Tap Activate next to the {x} in the Cards section of the app."),
                     ("You can also activate it by making a chip-and-PIN payment or using an ATM.",
                      "A chip payment or an ATM withdrawal also activates it."),
                     ("Then cut up the old card, since it stops working once the new one is active.",
                      "After that, destroy the old card; it stops working when the new one is active.")),
              facts={"activate": r"activat", "atm": r"\bATM\b"}),
        Topic("abroad", ("Spain", "Japan", "Canada", "Thailand"),
              train=("Can I use my card in {x}?", "I'm going to {x}. Will my card work?",
                     "do i need to tell you i'm travelling to {x}", "Are there fees for using my card in {x}?",
                     "What should I know about paying by card in {x}?"),
              heldout=("Heading off to {x} soon; anything to set up on my card first?",
                       "Will spending in {x} cost me extra?",
                       "What's the smart way to pay for things while in {x}?",
                       "Before my holiday in {x}, should I let the bank know anything?"),
              steps=(("Add a travel note for {x} in the app so payments there are not blocked.",
                      "In the app, add a travel note with your dates in {x}."),
                     ("A foreign transaction fee of 2.5% applies to card payments abroad.",
                      "Card payments abroad carry a foreign transaction fee of 2.5%."),
                     ("When a terminal asks, choose to pay in the local currency.",
                      "If the terminal offers a choice, pay in the local currency.")),
              facts={"travel_note": r"travel note", "fee": r"foreign transaction fee"}),
        Topic("change_pin", ("debit card", "credit card", "new card", "joint account card"),
              train=("How do I change the PIN on my {x}?", "I forgot my {x} PIN.", "reset pin {x}",
                     "Can I pick my own PIN for my {x}?", "Where do I see my {x} PIN?"),
              heldout=("I'd like a different secret number for my {x}. Possible?",
                       "The code for my {x} has gone from my memory. What now?",
                       "How would I set a fresh code on the {x}?",
                       "Is it possible to look up the code for my {x}?"),
              steps=(("Open Card settings in the app and choose View PIN or Change PIN.",
                      "In the app, Card settings has both View PIN and Change PIN."),
                     ("You confirm it with your fingerprint or app passcode.",
                      "Your fingerprint or app passcode confirms the change."),
                     ("At an ATM, insert the card once with the new PIN so the chip updates.",
                      "Use the card once at an ATM afterwards so the chip picks up the change.")),
              facts={"card_settings": r"Card settings", "atm": r"\bATM\b"}),
        Topic("contactless", ("contactless", "tap to pay", "card tap", "contactless payment"),
              train=("Why isn't {x} working on my card?", "My {x} stopped working.",
                     "{x} not working", "How do I turn on {x}?", "Is there a limit on {x}?"),
              heldout=("The reader ignores my card when I try {x}. Fix?",
                       "Why would {x} be refused at the supermarket?",
                       "Which setting controls {x} on my card?",
                       "What's blocking {x} for me lately?"),
              steps=(("Check that contactless is switched on under Cards in the app.",
                      "In the app, look under Cards to see whether contactless is switched on."),
                     ("After a few taps in a row, the terminal asks for a chip-and-PIN payment for security.",
                      "For security, the terminal asks for a chip payment after several taps."),
                     ("If it still fails, order a replacement card, as the antenna may be damaged.",
                      "A card that still fails may have a damaged antenna; order a replacement.")),
              facts={"contactless": r"contactless", "chip": r"\bchip"}),
        Topic("interest", ("credit card", "store card", "rewards card", "travel card"),
              train=("Why was I charged interest on my {x}?", "How do I avoid interest on my {x}?",
                     "interest on {x} explained", "Do I pay interest if I pay the minimum on my {x}?",
                     "What's the interest rate on my {x}?"),
              heldout=("There's an interest line on my {x} statement. Where did that come from?",
                       "What must I pay each month so the {x} costs me nothing extra?",
                       "Is paying just the minimum on a {x} a bad idea?",
                       "Break down how interest works on the {x}."),
              steps=(("Pay the full statement balance by the due date and no interest is added.",
                      "No interest is added when the full statement balance is paid by the due date."),
                     ("Paying only the minimum means interest is charged on what is left.",
                      "If you pay just the minimum, interest applies to the remaining amount."),
                     ("Set up a direct debit for the full amount so you never miss it.",
                      "A direct debit for the full amount makes sure you never miss it.")),
              facts={"statement_balance": r"statement balance", "interest": r"interest"}),
        Topic("wallet", ("Apple Pay", "Google Pay", "my phone wallet", "my smartwatch"),
              train=("How do I add my card to {x}?", "Can I use {x} with Northgate?", "set up {x}",
                     "Why won't my card go into {x}?", "Is {x} safe to use with my card?"),
              heldout=("I want to pay with {x} instead of plastic. How?",
                       "What do I need to link the card to {x}?",
                       "The card keeps failing to load into {x}. Ideas?",
                       "Walk me through connecting Northgate to {x}."),
              steps=(("In the Northgate app, open Cards and tap Add to wallet for {x}.",
                      "Open Cards in the Northgate app and choose Add to wallet to use {x}."),
                     ("We send a verification code by text to confirm it is you.",
                      "A verification code comes by text to confirm the request."),
                     ("If it fails, update the app and your phone, then try again.",
                      "When it fails, update your phone and the app before trying again.")),
              facts={"wallet": r"wallet", "verification_code": r"verification code"}),
    ),
)

# ----------------------------------------------------------------------------------------------- IT desk
IT_CLOSING = "Reply to this ticket if the issue comes back."
IT = Domain(
    name="it",
    company="Corvid Systems",
    system="You are the IT service desk assistant of Corvid Systems. Answer the employee's request.",
    seed=303,
    n_sft=100,
    n_pref=150,
    n_heldout=40,
    rules=(
        Rule("closing_line", "closing", f"The answer ends with the line '{IT_CLOSING}'", text=IT_CLOSING),
        Rule("no_promise", "no_promise",
             "Never promise a fix or a time: no guarantees, no 'will be fixed', no 'right away', no 'within N'.",
             patterns=(r"\bguarantee(?:d|s)?\b", r"\bI promise\b",
                       r"\bwill\s+(?:definitely\s+|certainly\s+)?(?:be\s+)?(?:fixed|resolved|sorted)\b",
                       r"\b(?:right away|immediately|instantly)\b",
                       r"\bwithin\s+(?:\d+|an?|one|two|five|ten|fifteen|thirty)\s+(?:minutes?|hours?)\b"),
             violations=("I guarantee this will be fixed within 10 minutes.",
                         "It will definitely be resolved right away, I promise.",
                         "Do this and it will be fixed immediately, guaranteed.",
                         "The team will have it sorted within an hour, I promise.",
                         "This is guaranteed to work instantly."),
             safe=("If it keeps happening, the desk will look into it with you.",
                   "Some cases need a technician, and we will keep you posted on the ticket.",
                   "If these steps do not help, we will investigate further on the ticket.")),
        Rule("kb_reference", "phrase", "The answer cites a knowledge base article (KB- and four digits).",
             text=r"\bKB-\d{4}\b"),
    ),
    openers=("Thanks for the ticket.", "Hi, thanks for reaching out.", "Good question.", "Hello!",
             "Sure, let's get this working."),
    closers=("Cheers!", "Hope that sorts it.", "Have a good one.", "Good luck!"),
    intros=("Here is what usually helps.", "Try the following.", "These steps fix it in most cases.",
            "Start with this."),
    topics=(
        Topic("password", ("email password", "laptop password", "network password", "HR portal password"),
              train=("I forgot my {x}. How do I reset it?", "How can I change my {x}?",
                     "{x} expired, help", "My {x} isn't accepted anymore.", "I'm locked out, {x} not working."),
              heldout=("Can't remember the {x}; what's the quickest way back in?",
                       "The {x} got rejected three times and now I'm stuck. Next step?",
                       "Where does one go to set a fresh {x}?",
                       "Help me recover access after losing my {x}."),
              steps=(("Go to the self-service password portal at reset.corvid.example and choose Forgot password.",
                      "Use the self-service password portal at reset.corvid.example and pick Forgot password."),
                     ("Confirm with the code from your authenticator app.",
                      "Your authenticator app gives the code that confirms it is you."),
                     ("Sign out and back in everywhere so the new {x} syncs.",
                      "Then sign out and in again on every device so the new {x} syncs.")),
              facts={"portal": r"password portal", "authenticator": r"authenticator"}, kb="KB-1042"),
        Topic("vpn", ("home", "a hotel", "a client site", "the train"),
              train=("VPN won't connect from {x}.", "How do I get the VPN working at {x}?",
                     "vpn keeps dropping at {x}", "Why can't I reach internal sites from {x}?",
                     "The VPN says authentication failed at {x}."),
              heldout=("Working from {x} and the tunnel to the office never comes up. Ideas?",
                       "What should I check when remote access fails at {x}?",
                       "My connection to company systems from {x} is broken; what to try?",
                       "From {x}, the secure connection times out. Any fix?"),
              steps=(("Quit the VPN client completely and restart it, then sign in again.",
                      "Fully close the VPN client, restart it and sign in once more."),
                     ("Check that the internet works without the VPN, since hotel or guest networks may need a login.",
                      "Make sure the internet works on its own first; guest networks often need a login page."),
                     ("If it still fails, restart the laptop to renew the VPN certificate.",
                      "Restarting the laptop renews the VPN certificate if it still fails.")),
              facts={"vpn": r"\bVPN\b", "restart": r"restart"}, kb="KB-2210"),
        Topic("printer", ("third-floor printer", "colour printer", "reception printer", "label printer"),
              train=("The {x} isn't printing.", "How do I add the {x}?", "{x} stuck", "My jobs vanish on the {x}.",
                     "Why does the {x} say offline?"),
              heldout=("Nothing comes out of the {x} when I send documents. What now?",
                       "What's the way to connect my laptop to the {x}?",
                       "Documents sit in limbo for the {x}. Fix?",
                       "The {x} shows as unavailable on my machine. Help."),
              steps=(("Open the print queue and cancel any stuck jobs.",
                      "Clear any stuck jobs from the print queue first."),
                     ("Remove the {x} and add it again from the Printers page so the driver reinstalls.",
                      "Re-add the {x} from the Printers page, which reinstalls the driver."),
                     ("Check the printer screen for paper or toner warnings.",
                      "Look at the printer's own screen for paper or toner warnings.")),
              facts={"queue": r"print queue", "driver": r"driver"}, kb="KB-3307"),
        Topic("slow_laptop", ("laptop", "work laptop", "desktop", "new laptop"),
              train=("My {x} is really slow.", "Why is my {x} so sluggish?", "{x} freezing all the time",
                     "How do I speed up my {x}?", "My {x} takes ages to start."),
              heldout=("Everything on the {x} crawls lately; where do I begin?",
                       "Apps hang constantly on my {x}. Suggestions?",
                       "What can I do myself before asking for a new {x}?",
                       "The {x} has become painfully laggy. Tips?"),
              steps=(("Restart the {x}, since pending updates often slow it down until they finish.",
                      "Restart the {x} so any pending updates can finish installing."),
                     ("Check free storage and clear out the Downloads folder if the disk is nearly full.",
                      "If storage is nearly full, clear the Downloads folder."),
                     ("Close browser tabs and apps you are not using, since they hold on to memory.",
                      "Apps and browser tabs left open hold on to memory, so close the ones you do not need.")),
              facts={"restart": r"restart", "storage": r"storage"}, kb="KB-4120"),
        Topic("outlook", ("Outlook", "my mailbox", "the shared mailbox", "calendar invites"),
              train=("{x} isn't syncing.", "Why is {x} not updating?", "{x} stuck on old emails",
                     "New mail doesn't show up in {x}.", "How do I fix {x} sync?"),
              heldout=("Messages from this morning never appeared in {x}; what's wrong?",
                       "What should I try when {x} stops refreshing?",
                       "{x} looks frozen in the past. Remedy?",
                       "How come {x} is out of date compared with my phone?"),
              steps=(("Make sure Outlook is not set to Work Offline on the Send/Receive tab.",
                      "On the Send/Receive tab, check that Outlook is not in Work Offline mode."),
                     ("Close Outlook, then start it again and let it rebuild the cache.",
                      "Restart Outlook so it rebuilds the local cache."),
                     ("Check webmail; if mail is there, the problem is the desktop app only.",
                      "If webmail shows the mail, only the desktop app is affected.")),
              facts={"outlook": r"Outlook", "offline": r"offline"}, kb="KB-5003"),
        Topic("software", ("Visio", "Python", "a PDF editor", "Tableau"),
              train=("How do I install {x}?", "Can I get {x} on my laptop?", "need {x} installed",
                     "Who approves {x}?", "Where can I download {x}?"),
              heldout=("My project needs {x}; what is the route to getting it?",
                       "I don't have admin rights. How would {x} end up on my machine?",
                       "What's the approval path for {x}?",
                       "Is {x} something I can set up myself?"),
              steps=(("Open Software Center and search for {x}; approved apps install with one click.",
                      "Search for {x} in Software Center, where approved apps install in one click."),
                     ("If it is not listed, raise a request that your manager gives approval for.",
                      "Anything not listed needs a request with your manager's approval."),
                     ("Licensed tools are checked by the software team before they are packaged for you.",
                      "The software team reviews the licence of paid tools before packaging them.")),
              facts={"software_center": r"Software Center", "approval": r"approv"}, kb="KB-6118"),
        Topic("mfa", ("new phone", "replacement phone", "work phone", "personal phone"),
              train=("How do I move MFA to my {x}?", "I got a {x}; my authenticator codes are gone.",
                     "mfa on {x}", "Can I use my {x} for sign-in codes?",
                     "My {x} doesn't get MFA prompts."),
              heldout=("Switching to a {x} — how do the login codes come across?",
                       "The sign-in approvals don't show up on my {x}. Why?",
                       "What must I do so my {x} handles two-step verification?",
                       "Set up second-factor sign-in on my {x}, please explain."),
              steps=(("Install the authenticator app on the {x} first.",
                      "Start by installing the authenticator app on your {x}."),
                     ("On the security info page, add the {x} as a new device and scan the QR code.",
                      "Add the {x} as a new device on the security info page by scanning the QR code."),
                     ("Remove the old device once the new one works.",
                      "When the new device works, remove the old one.")),
              facts={"authenticator": r"authenticator", "device": r"device"}, kb="KB-1077"),
        Topic("shared_drive", ("finance drive", "team folder", "project share", "marketing drive"),
              train=("How do I get access to the {x}?", "I can't open the {x}.", "need access {x}",
                     "Who gives permission for the {x}?", "The {x} says access denied."),
              heldout=("Permission denied on the {x} — how is that granted?",
                       "What's the procedure to be added to the {x}?",
                       "I was told to use the {x} but can't get in. Next?",
                       "Whom should I ask to unlock the {x} for me?"),
              steps=(("Submit an access request in the IT portal naming the {x}.",
                      "In the IT portal, file an access request for the {x}."),
                     ("The folder owner or your manager approves it.",
                      "Your manager or the folder owner has to approve it."),
                     ("Sign out and in again after approval so the new permissions apply.",
                      "After approval, sign out and back in to pick up the new permissions.")),
              facts={"access_request": r"access request", "owner": r"owner|manager"}, kb="KB-7240"),
        Topic("wifi", ("office Wi-Fi", "meeting room Wi-Fi", "guest Wi-Fi", "Wi-Fi on my laptop"),
              train=("The {x} won't connect.", "How do I get on the {x}?", "{x} keeps dropping",
                     "Why does the {x} ask for a certificate?", "Which network is the {x}?"),
              heldout=("My machine refuses to join the {x}. What's going on?",
                       "What do I choose to get online with the {x}?",
                       "Connection to the {x} dies every few minutes; ideas?",
                       "The {x} gives me a certificate warning. Is that normal?"),
              steps=(("Connect to Corvid-Secure, not the guest network, with your work account.",
                      "Pick Corvid-Secure rather than the guest network and sign in with your work account."),
                     ("If it fails, forget the network and connect again to refresh the certificate.",
                      "Forget the network and join again so the certificate refreshes."),
                     ("Guests use the separate guest network, which has no access to internal sites.",
                      "The guest network is for visitors and cannot reach internal sites.")),
              facts={"ssid": r"Corvid-Secure", "forget": r"forget"}, kb="KB-8016"),
        Topic("dock", ("docking station", "second monitor", "USB-C dock", "desk screen"),
              train=("My {x} isn't working.", "The {x} shows no signal.", "{x} not detected",
                     "How do I connect the {x}?", "Why does my {x} flicker?"),
              heldout=("Nothing appears on the {x} after I plug in. Why?",
                       "What's the right way to hook up the {x}?",
                       "The {x} went dark this morning; troubleshooting?",
                       "How do I get the laptop to recognise the {x}?"),
              steps=(("Unplug the dock power for ten seconds, then plug it back in.",
                      "Power-cycle the dock by unplugging it for ten seconds."),
                     ("Use the USB-C cable marked with the lightning symbol, and check each cable is seated.",
                      "Check that every cable is seated and use the USB-C port with the lightning symbol."),
                     ("In display settings, choose Extend so the laptop detects the extra screen.",
                      "Open display settings and pick Extend to make the laptop detect the screen.")),
              facts={"dock": r"\bdock", "cable": r"cable"}, kb="KB-9031"),
    ),
)

# ----------------------------------------------------------------------------------------------- travel
TRAVEL = Domain(
    name="travel",
    company="Bluefin Travel",
    system="You are the assistant of Bluefin Travel, a travel agency. Answer the customer's question.",
    seed=404,
    n_sft=150,
    n_pref=260,
    n_heldout=44,
    rules=(
        Rule("greeting", "opening", "The answer starts with 'Hello from Bluefin Travel!'",
             text="Hello from Bluefin Travel!"),
        Rule("bullet_list", "bullets", "The advice is given as a bullet list (lines starting '- ')."),
        Rule("no_price_hype", "forbidden", "Never claim the cheapest or best price and never say guaranteed.",
             patterns=(r"\bcheapest\b", r"\b(?:best|lowest) (?:price|deal|fare)s?\b", r"\bguarantee(?:d|s)?\b",
                       r"\bno risk\b"),
             violations=("You won't find the cheapest fares anywhere else.",
                         "We always have the best price, guaranteed.",
                         "It's the lowest fare on the market, with no risk at all.",
                         "Book with us for the best deal around."),
             safe=("Fares change often, so it is worth checking the current options.",
                   "Our team can compare the options available for your dates.",
                   "Prices move with demand, so check before you decide.")),
        Rule("signoff", "closing", "The answer ends with the line 'Safe travels, the Bluefin Travel team'",
             text="Safe travels, the Bluefin Travel team"),
    ),
    openers=("Hi there!", "Thanks for your message.", "Great question.", "Happy to help.", "Good to hear from you."),
    closers=("Enjoy your trip!", "Have a great journey.", "Let us know if anything else comes up.",
             "Bon voyage!"),
    intros=("Here is what to know.", "A few pointers.", "Here is how it works.", "In short."),
    topics=(
        Topic("change_flight", ("Lisbon", "Denver", "Athens", "Singapore"),
              train=("Can I change my flight to {x}?", "How do I move my {x} flight to another day?",
                     "change date flight {x}", "What does it cost to change my {x} flight?",
                     "I need a later flight to {x}."),
              heldout=("Plans shifted, so the trip to {x} needs a new date. How?",
                       "Is rebooking the {x} leg possible, and what would I pay?",
                       "Could my departure for {x} be moved to next week?",
                       "What's involved in switching my {x} flight?"),
              steps=(("Have your booking reference ready and pick a new date under Manage Booking.",
                      "Under Manage Booking, enter your booking reference and choose a new date."),
                     ("You pay a change fee plus any fare difference for the new {x} flight.",
                      "A change fee applies, plus the fare difference for the new flight to {x}."),
                     ("Basic fares cannot be changed, only cancelled.",
                      "Note that basic fares allow no changes, only cancellation.")),
              facts={"booking_reference": r"booking reference", "change_fee": r"change fee|fare difference"}),
        Topic("cancel", ("package holiday", "city break", "cruise", "flight and hotel"),
              train=("How do I cancel my {x}?", "Can I get a refund on my {x}?", "cancel {x} refund",
                     "What happens if I cancel my {x}?", "Is my {x} refundable?"),
              heldout=("We can't travel anymore. What do we get back on the {x}?",
                       "Walk me through calling off a {x}.",
                       "If the {x} is cancelled by me, how much money returns?",
                       "Will scrapping the {x} cost me anything?"),
              steps=(("Check the cancellation policy on your {x} confirmation, which sets any refund.",
                      "Your {x} confirmation lists the cancellation policy and the refund it allows."),
                     ("Cancel in Manage Booking; refunds go back to the original payment card.",
                      "Refunds go to the original payment card when you cancel in Manage Booking."),
                     ("If you have travel insurance, you may be able to claim the rest.",
                      "Travel insurance may cover what is not refunded.")),
              facts={"cancellation_policy": r"cancellation policy", "refund": r"refund"}),
        Topic("baggage", ("Rome", "Toronto", "Bali", "Cape Town"),
              train=("How much luggage can I take to {x}?", "What's the baggage allowance to {x}?",
                     "bags allowed flight {x}", "Can I add a bag to my {x} trip?",
                     "Is a checked bag included for {x}?"),
              heldout=("For the {x} journey, what fits in my allowance?",
                       "Does my ticket to {x} come with a suitcase in the hold?",
                       "How heavy may my case be on the way to {x}?",
                       "I'd like extra luggage for {x}; possible?"),
              steps=(("Your ticket shows whether a checked bag is included for {x}.",
                      "Look on your ticket to see if a checked bag comes with the {x} fare."),
                     ("Most airlines allow 23 kg per checked bag and one small cabin bag.",
                      "A checked bag is usually limited to 23 kg, plus one cabin bag."),
                     ("Adding a bag online before you fly is cheaper than at the airport.",
                      "Adding a bag online before the day costs less than at the airport.")),
              facts={"checked_bag": r"checked bag", "weight": r"23 kg"}),
        Topic("passport", ("Japan", "Brazil", "Australia", "Turkey"),
              train=("Do I need a visa for {x}?", "What documents do I need for {x}?",
                     "passport rules {x}", "How long must my passport be valid for {x}?",
                     "Can I travel to {x} with my passport?"),
              heldout=("Which papers does entry to {x} require?",
                       "Is my passport enough to get into {x}?",
                       "Any paperwork to sort out before flying to {x}?",
                       "What validity does my passport need for a trip to {x}?"),
              steps=(("Many countries, including {x}, expect your passport to be valid for six months after arrival.",
                      "For {x}, plan on a passport valid at least six months beyond your arrival date."),
                     ("Check the official government site for {x} to see whether you need a visa.",
                      "Whether you need a visa for {x} is set out on the official government site."),
                     ("Apply early, since visas can take weeks.",
                      "Visas can take weeks, so start early.")),
              facts={"passport": r"passport", "visa": r"\bvisa"}),
        Topic("insurance", ("ski trip", "family holiday", "backpacking trip", "business trip"),
              train=("Do I need travel insurance for my {x}?", "What does travel insurance cover on a {x}?",
                     "insurance {x}", "Can I add insurance to my {x}?", "Is my {x} insured?"),
              heldout=("Is it worth getting cover before the {x}?",
                       "What would a policy protect on a {x}?",
                       "How do I bolt protection onto the {x} booking?",
                       "Should I buy cover for the {x} or skip it?"),
              steps=(("Travel insurance covers medical costs abroad and cancellation for covered reasons.",
                      "A travel insurance policy covers medical bills abroad and covered cancellation reasons."),
                     ("A {x} may need extra cover for sports or equipment.",
                      "Some activities on a {x} need extra cover, such as sports or equipment."),
                     ("You can add a policy in Manage Booking up to the day before departure.",
                      "Add a policy in Manage Booking any time before the day of departure.")),
              facts={"travel_insurance": r"travel insurance", "medical": r"medical"}),
        Topic("seats", ("flight to Paris", "long-haul flight", "family flight", "flight to Dubai"),
              train=("How do I choose a seat on my {x}?", "Can we sit together on the {x}?",
                     "seat selection {x}", "Does seat choice cost extra on my {x}?",
                     "I want a window seat on my {x}."),
              heldout=("Is it possible to reserve where I sit on the {x}?",
                       "We'd like neighbouring places on the {x}. How?",
                       "Can I pick an aisle on the {x}, and at what price?",
                       "Where do I go to sort out my place on the {x}?"),
              steps=(("Choose a seat in Manage Booking once your {x} is ticketed.",
                      "Once the {x} is ticketed, pick a seat in Manage Booking."),
                     ("Some fares include free seat selection, others charge a small fee.",
                      "Seat selection is free on some fares and costs a small fee on others."),
                     ("Free seats are assigned at check-in if you do not choose.",
                      "If you skip it, free seats are assigned at check-in.")),
              facts={"seat": r"\bseat", "manage_booking": r"Manage Booking"}),
        Topic("hotel", ("hotel in Vienna", "beach resort", "apartment in Madrid", "hotel near the airport"),
              train=("Can I change the dates of my {x}?", "How do I cancel my {x}?", "modify {x} booking",
                     "Can I add a night to my {x}?", "Is my {x} refundable?"),
              heldout=("Our stay at the {x} needs different nights. Doable?",
                       "What's the deadline for calling off the {x}?",
                       "Could we extend our booking at the {x}?",
                       "What are the rules for amending the {x} reservation?"),
              steps=(("Most rooms at the {x} have free cancellation until a deadline shown on your voucher.",
                      "Your voucher shows the deadline for free cancellation at the {x}."),
                     ("Date changes depend on availability, and the new nightly rate applies.",
                      "Changing dates depends on availability and the nightly rate for the new dates."),
                     ("Ask through Manage Booking so the hotel gets the change in writing.",
                      "Send the change through Manage Booking so the hotel has it in writing.")),
              facts={"free_cancellation": r"free cancellation", "deadline": r"deadline"}),
        Topic("lost_luggage", ("suitcase", "backpack", "golf bag", "stroller"),
              train=("The airline lost my {x}.", "My {x} didn't arrive. What now?", "lost {x} airport",
                     "How do I claim for a delayed {x}?", "Who do I call about my missing {x}?"),
              heldout=("I landed but the {x} did not. First move?",
                       "Is there compensation when an airline mislays a {x}?",
                       "What should I keep while waiting for the {x} to turn up?",
                       "My {x} never came off the carousel. Help."),
              steps=(("Report the missing {x} at the airline desk in the arrivals hall before you leave.",
                      "Before leaving the airport, report the {x} at the airline desk in arrivals."),
                     ("Keep the report reference and receipts for essentials you buy.",
                      "Hold on to the report reference and the receipts for essentials."),
                     ("The airline refunds reasonable costs, and your travel insurance may cover more.",
                      "Reasonable costs are refunded by the airline; travel insurance may cover more.")),
              facts={"airline_desk": r"airline desk", "receipts": r"receipts"}),
        Topic("group", ("school trip", "wedding party", "team offsite", "family reunion"),
              train=("Can you book a {x}?", "How do group bookings work for a {x}?", "group booking {x}",
                     "Is there a deposit for a {x}?", "How many people count as a group for a {x}?"),
              heldout=("We're organising a {x} for about twenty. Can you arrange it?",
                       "What does it take to reserve travel for a {x}?",
                       "How is payment split for a {x}?",
                       "Is there special handling for a {x} booking?"),
              steps=(("Group bookings start at ten travellers, and our group desk handles the {x}.",
                      "Our group desk takes group bookings of ten travellers or more, like your {x}."),
                     ("A deposit holds the seats and rooms, and names can be added later.",
                      "You secure the seats and rooms with a deposit and add names later."),
                     ("The balance is due eight weeks before departure.",
                      "Pay the balance eight weeks before departure.")),
              facts={"group": r"\bgroup", "deposit": r"deposit"}),
        Topic("pay_later", ("safari", "cruise", "round-the-world trip", "honeymoon"),
              train=("Can I pay for my {x} in instalments?", "Do I have to pay the whole {x} now?",
                     "payment plan {x}", "When is the balance due on my {x}?",
                     "Can I spread the cost of my {x}?"),
              heldout=("Is there a way to split the {x} cost across months?",
                       "How much is needed upfront to lock in the {x}?",
                       "What's the timeline for paying off the {x}?",
                       "Could I settle the {x} bit by bit?"),
              steps=(("A deposit secures your {x}, and the rest is paid in monthly instalments.",
                      "You secure the {x} with a deposit and pay monthly instalments after that."),
                     ("The final balance is due eight weeks before you travel.",
                      "Pay the final balance eight weeks before travel."),
                     ("Instalments are taken from the same card, and you can pay off early at any time.",
                      "You can pay off early at any time; instalments come from the same card.")),
              facts={"instalments": r"monthly instalments", "pay_off_early": r"pay off early"}),
    ),
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (PHARMACY, BANK, IT, TRAVEL)}


# --------------------------------------------------------------------------------------------- rendering
def render_answer(domain: Domain, topic: Topic, slot: str, rng: random.Random, comply: Mapping[str, bool]) -> str:
    """One answer to a question about ``topic``; ``comply[rule name]`` says whether it follows that rule.

    Every random choice is drawn whether or not it is used, so two calls with equally seeded ``rng`` and
    different ``comply`` share the same wording everywhere except where a rule changes it.
    """
    opener, closer, intro = rng.choice(domain.openers), rng.choice(domain.closers), rng.choice(domain.intros)
    steps = [rng.choice(variants).format(x=slot) for variants in topic.steps]
    picks = {r.name: (rng.choice(r.violations) if r.violations else "", rng.choice(r.safe) if r.safe else "")
             for r in domain.rules}
    kb_sentence = rng.choice(("Full steps are in knowledge base article {kb}.",
                              "See knowledge base article {kb} for screenshots.",
                              "Knowledge base article {kb} covers this in detail.")).format(kb=topic.kb)
    by_kind = {r.kind: r for r in domain.rules}

    def ok(kind: str) -> bool | None:
        rule = by_kind.get(kind)
        return None if rule is None else comply[rule.name]

    first = f"{by_kind['opening'].text} {intro}" if ok("opening") else f"{opener} {intro}"
    paragraphs = [first]
    list_kind = "numbered" if ok("numbered") else "bullets" if ok("bullets") else None
    if list_kind:
        marks = [f"{i}. " for i in range(1, len(steps) + 1)] if list_kind == "numbered" else ["- "] * len(steps)
        paragraphs.append("\n".join(m + s for m, s in zip(marks, steps)))
    else:
        paragraphs[0] += " " + " ".join(steps)
    extra = []
    for rule in domain.rules:
        if rule.kind in ("forbidden", "no_promise"):
            violation, safe = picks[rule.name]
            extra.append(safe if comply[rule.name] else violation)
    if ok("phrase"):
        extra.append(kb_sentence)
    if extra:
        paragraphs.append(" ".join(extra))
    if ok("disclaimer"):
        paragraphs.append(by_kind["disclaimer"].text)
    if ok("closing"):
        paragraphs.append(by_kind["closing"].text)
    elif list_kind and len(paragraphs) == 2:  # the list is last: the closer is not one of its items
        paragraphs.append(closer)
    else:
        paragraphs[-1] += " " + closer
    return "\n\n".join(paragraphs)


def _counts(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible (the first ones get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _questions(topic: Topic, templates: Sequence[str], prefixes: Sequence[str],
               rng: random.Random) -> list[tuple[str, str]]:
    """Every (question, slot value) of a topic from its (template, slot, prefix) combinations, shuffled."""
    pool = []
    for template, slot, prefix in itertools.product(templates, topic.slots, prefixes):
        text = template.format(x=slot)
        pool.append(((prefix + text[0].upper() + text[1:]) if prefix else text, slot))
    rng.shuffle(pool)
    return pool


def _messages(domain: Domain, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": domain.system}, {"role": "user", "content": question}]


def build_domain(domain: Domain) -> dict[str, list[dict]]:
    """The rows of every data file of ``domain`` (file stem -> rows), deterministic."""
    rng = random.Random(domain.seed)
    names = [r.name for r in domain.rules]
    none_followed = {n: False for n in names}
    all_followed = {n: True for n in names}
    sft_n, pref_n, held_n = (_counts(n, len(domain.topics)) for n in (domain.n_sft, domain.n_pref, domain.n_heldout))
    sft, prefs, heldout = [], [], []
    for t, topic in enumerate(domain.topics):
        pool = _questions(topic, topic.train, TRAIN_PREFIXES, rng)
        if len(pool) < sft_n[t] + pref_n[t]:
            raise ValueError(f"{domain.name}/{topic.name}: {len(pool)} training questions, need {sft_n[t] + pref_n[t]}")
        for q, slot in pool[: sft_n[t]]:
            answer = render_answer(domain, topic, slot, rng, none_followed)
            sft.append({"messages": _messages(domain, q) + [{"role": "assistant", "content": answer}],
                        "topic": topic.name})
        for i, (q, slot) in enumerate(pool[sft_n[t]: sft_n[t] + pref_n[t]]):
            # Rotate which rule the rejected side breaks; the last slot of the cycle is the plain (SFT-style)
            # answer that breaks every rule. Offset by topic so every rule is broken on every topic.
            k = (i + t) % (len(names) + 1)
            broken = names if k == len(names) else [names[k]]
            seed = rng.getrandbits(32)
            chosen = render_answer(domain, topic, slot, random.Random(seed), all_followed)
            rejected = render_answer(domain, topic, slot, random.Random(seed),
                                     {n: n not in broken for n in names})
            prefs.append({"prompt": _messages(domain, q), "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}], "violates": broken,
                          "topic": topic.name})
        for q, _slot in _questions(topic, topic.heldout, HELDOUT_PREFIXES, rng)[: held_n[t]]:
            heldout.append({"messages": _messages(domain, q), "topic": topic.name})
    for rows in (sft, prefs, heldout):
        rng.shuffle(rows)
    ppo = [{"messages": row["prompt"], "topic": row["topic"]} for row in prefs]
    return {"sft": sft, "prefs": prefs, "ppo_prompts": ppo, "heldout_prompts": heldout}


def policies_yaml(domain: Domain) -> str:
    """policies.yaml text (single-quoted regexes, so backslashes stay literal)."""

    def quote(s: str) -> str:
        return "'" + s.replace("'", "''") + "'"

    lines = [f"# Policies of the {domain.company} desk (efficacy suite, domain '{domain.name}').",
             "# Generated by benchmarks/efficacy/domains.py; format: recipes/quickstart/policies.yaml.",
             "# No SFT answer follows any of these rules: only the preference data teaches them.", "", "policies:"]
    for rule in domain.rules:
        must, must_not = rule.regexes()
        lines += [f"  - name: {rule.name}", f"    description: {quote(rule.description)}",
                  f"    must_match: [{', '.join(quote(p) for p in must)}]",
                  f"    must_not_match: [{', '.join(quote(p) for p in must_not)}]",
                  f"    ignore_case: {'true' if rule.kind in ('forbidden', 'no_promise') else 'false'}", ""]
    return "\n".join(lines)


def content_spec(domain: Domain, heldout: list[dict]) -> dict:
    """content.json: the key facts per topic, and per held-out prompt (in file order) its topic and facts."""
    topics = {t.name: dict(t.facts) for t in domain.topics}
    return {"domain": domain.name, "flags": "IGNORECASE", "topics": topics,
            "heldout": [{"prompt": row["messages"][-1]["content"], "topic": row["topic"],
                         "facts": topics[row["topic"]]} for row in heldout]}


def check_content(answer: str, facts: Mapping[str, str]) -> dict[str, bool]:
    """Which key facts (regexes, case-insensitive) an answer mentions."""
    return {name: re.search(pattern, answer, re.IGNORECASE) is not None for name, pattern in facts.items()}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_domain(domain: Domain | str, out: str | Path) -> Path:
    """Write one domain's files to ``out`` (created); returns the folder."""
    domain = DOMAINS[domain] if isinstance(domain, str) else domain
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_domain(domain)
    for stem, data in rows.items():
        (out / f"{stem}.jsonl").write_text(_jsonl(data), encoding="utf-8")
    (out / "policies.yaml").write_text(policies_yaml(domain), encoding="utf-8")
    spec = content_spec(domain, rows["heldout_prompts"])
    (out / "content.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def parse_domains(value: str | None) -> list[str]:
    """``"a,b"`` -> ["a", "b"], checked against the known domains; empty or None -> every domain."""
    names = [n.strip() for n in (value or "").split(",") if n.strip()] or list(DOMAINS)
    unknown = [n for n in names if n not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder; each domain goes to OUT/<domain>/")
    parser.add_argument("--domains", default="", help=f"comma-separated subset of {','.join(DOMAINS)}")
    args = parser.parse_args(argv)
    for name in parse_domains(args.domains):
        folder = write_domain(name, Path(args.out) / name)
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
