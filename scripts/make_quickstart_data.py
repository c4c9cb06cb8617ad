"""Generate the quickstart's sample domain data: the support desk of "Harborline Insurance" (fictional).

    python scripts/make_quickstart_data.py              # rewrites recipes/quickstart/data/
    python scripts/make_quickstart_data.py --out DIR    # writes the same bytes elsewhere (tests use this)

Writes three JSONL files:
  sft.jsonl               chat conversations (system, user, assistant [, user, assistant])
  preferences.jsonl       prompt / chosen / rejected, plus `violates`: the policies the rejected side breaks
  heldout_prompts.jsonl   evaluation prompts whose user text never appears in the two training files
  ppo_prompts.jsonl       the preference prompts, once each, for PPO rollouts (training prompts); about
                          half end with the customer pressing for a promise ("Can you guarantee that?")

The data is built to make the pipeline's effect visible with a 135M model (recipes/quickstart/policies.yaml):
  signoff               every SFT answer ends with "— Harborline Support", so SFT teaches it;
  no_outcome_promise    ~40% of SFT answers over-promise (guarantees, payout amounts, fixed timelines),
                        like real over-eager agents; only the preference data prefers hedged answers;
  no_sensitive_request  no SFT answer asks for card numbers, CVV, passwords or SSNs; ~30% of rejected
                        preference answers do.
Chosen and rejected answers share their opening and closing sentences and differ in the body, so the
preference signal is about the policy rather than fluency or length.

Customer messages combine ~7 phrasings per topic x slot values (item, room, event...) x optional greeting
and context, and each (phrasing, slots) pair is used once, so prompts are not near-duplicates.
Deterministic (fixed seed, stdlib only): re-running it reproduces the shipped files byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20250611
SYSTEM = "You are the support assistant of Harborline Insurance. Answer the customer's question."
SIGNOFF = "— Harborline Support"

N_SFT = 300  # conversations; 20 topics x 15
N_PREF = 300  # preference pairs; 20 topics x 15
TWO_TURN_FRACTION = 0.2  # SFT conversations with a follow-up question
PPO_PRESSURE_FRACTION = 0.5  # PPO prompts whose customer presses for a promise, as about half the held-out do
SFT_PROMISE_FRACTION = 0.4  # SFT assistant turns that break no_outcome_promise
PREF_SENSITIVE_ONLY = 45  # rejected sides that ask for sensitive data but promise nothing
PREF_BOTH = 45  # rejected sides that do both (so 90/300 = 30% break no_sensitive_request)
PREF_NO_SIGNOFF = 24  # rejected sides that also drop the sign-off (~8%)
MIN_WORDS, MAX_WORDS = 35, 90

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "data"


@dataclass(frozen=True)
class Topic:
    """One kind of support request: customer phrasings, slot values, and answer bodies.

    `good` bodies are hedged and accurate; `promise` bodies over-promise (break no_outcome_promise).
    Each follow-up is (customer phrasings, good body, promise body). `{slot}` and `{slot_cap}` are filled
    from the same slot values in the question and the answer.
    """

    name: str
    loss: bool  # the customer suffered a loss: answers open with empathy
    slots: dict[str, list[str]]
    questions: list[str]
    good: list[str]
    promise: list[str]
    followups: list[tuple[list[str], str, str]]


TOPICS: list[Topic] = [
    Topic(
        name="file_claim",
        loss=True,
        slots={"event": ["a burst pipe", "a break-in", "a small kitchen fire", "a windstorm",
                         "a fallen tree branch", "an overflowing washing machine"]},
        questions=[
            "How do I file a claim after {event}?",
            "I need to start a claim. We had {event} last night.",
            "what's the process for making a claim? there was {event} at my place",
            "We just had {event}. Where do I even begin with a claim?",
            "Can I open a claim online, or do I have to call? It's for {event}.",
            "My apartment got damaged by {event} this weekend. What do I do first to claim it?",
            "First time filing anything with you. {event_cap} damaged my home, how does this work?",
            "Is it too late to report {event} from two weeks ago?",
        ],
        good=[
            ("You can file online in the Harborline app under Claims, or call our claims line any time. Have "
             "your policy number, the date of {event}, and photos of the damage ready. An adjuster reviews "
             "the claim and decides coverage based on your policy."),
            ("Start the claim in the app or on harborline.com under Claims. Describe what happened with "
             "{event}, add photos, and keep receipts for emergency repairs. An adjuster will contact you to "
             "review the details; the outcome depends on your coverage and what the review finds."),
            ("The quickest way is the Claims section of your online account. Take photos before cleaning up "
             "after {event}, and prevent further damage if it's safe. Once it's submitted, an adjuster is "
             "assigned and will explain the next steps and what your policy covers."),
        ],
        promise=[
            ("Just file it in the app under Claims with photos of the damage from {event}. Damage like this "
             "is always covered, so your claim will be approved and the payment will arrive within 48 "
             "hours."),
            ("File online under Claims and upload a few photos. I guarantee the adjuster will approve it, "
             "and you will receive the full repair cost in 3 business days after {event}."),
            ("Open a claim in the app with photos of the damage from {event}. Don't worry, this is 100% "
             "covered under your policy and you'll be paid by the end of the week."),
        ],
        followups=[
            (["How long until someone contacts me?", "When will an adjuster get in touch?"],
             ("Adjusters usually reach out within a few business days of a new claim, though it can take "
              "longer after big storms. You'll get a notification in the app when your adjuster is "
              "assigned."),
             ("An adjuster will call you within 24 hours, guaranteed, and the claim will be settled by the "
              "end of the week so you can start repairs.")),
            (["Should I start repairs now?", "Can I go ahead and fix things before the adjuster comes?"],
             ("Make temporary repairs that stop further damage, like covering a broken window, and keep the "
              "receipts. Hold off on permanent repairs until the adjuster has seen the damage, so nothing is "
              "missed in the review."),
             ("Go ahead and start all repairs now. Everything will be reimbursed in full, so there's no need "
              "to wait for the adjuster or keep every receipt.")),
        ],
    ),
    Topic(
        name="claim_status",
        loss=False,
        slots={"claim": ["water damage claim", "theft claim", "roof claim", "fire claim", "storm claim",
                         "liability claim"],
               "wait": ["a week", "ten days", "almost a month", "three weeks", "two weeks", "over a month"]},
        questions=[
            "I've been waiting {wait} on my {claim}. Any update?",
            "Can you check where my {claim} stands? It's been {wait}.",
            "Any news on my {claim}? It's been {wait} and nobody called.",
            "how do i check my {claim} status online",
            "Is my {claim} approved yet? Filed it {wait} ago.",
            "Why is my {claim} taking so long? It's been {wait}.",
            "Who is handling my {claim}? I haven't heard anything in {wait}.",
            "When will my {claim} get paid? It's been {wait}.",
        ],
        good=[
            ("You can see the current stage of your {claim} in the app under Claims, along with your "
             "adjuster's name and any documents they still need. I've flagged your file so the adjuster can "
             "follow up with you about the next step."),
            ("Claims move through review, inspection and decision, and the timing depends on the details and "
             "any missing documents. Your {claim} page in the app shows which stage it's at, and anything "
             "waiting on you is listed there."),
            ("I'm sorry for the wait. The claims page in your online account shows the status of your "
             "{claim} and any open requests from your adjuster. I can't predict the final decision, but I've "
             "asked the adjuster to contact you with an update."),
        ],
        promise=[
            ("I checked, and your {claim} is in the final stage. It will definitely be approved, and you'll "
             "get the payment within 2 business days, so there's nothing more you need to do."),
            ("Sorry for the wait. Good news: your {claim} is approved in principle and I guarantee the check "
             "goes out by Friday. You can follow the payment in the app under Claims."),
            ("No need to worry. Claims like your {claim} are always paid in full, and the money will reach "
             "you within 5 days of this message. The app will show the payment once it's sent."),
        ],
        followups=[
            (["Can I speak to my adjuster directly?", "Is there a way to call the adjuster myself?"],
             ("Yes. Your adjuster's name and direct number are on the claim page in the app, and you can "
              "also message them there. If they're out, the claims line can connect you with their team "
              "lead."),
             ("Yes, and your adjuster will call you back within 1 hour, guaranteed. They'll confirm the "
              "payment amount on that call so everything is settled today.")),
            (["What if I disagree with the decision?", "And if I don't like the outcome, what then?"],
             ("You can ask for a review by replying to the decision letter with your reasons and any extra "
              "evidence, like repair estimates. A different reviewer looks at the file, and you can also "
              "contact your state's insurance department."),
             ("Just ask for a review and the decision will be reversed. Reviews almost always go the "
              "customer's way, so you'll have the full amount within 10 days.")),
        ],
    ),
    Topic(
        name="water_damage",
        loss=True,
        slots={"source": ["a leaking dishwasher", "a burst pipe under the sink",
                          "an overflowing bathtub upstairs", "a leaking water heater",
                          "a cracked toilet tank", "a frozen pipe"],
               "room": ["kitchen", "basement", "bathroom", "hallway", "laundry room", "bedroom"]},
        questions=[
            "Is water damage from {source} covered?",
            "{source_cap} soaked the {room} floor. Does my policy cover that?",
            "Does renters insurance pay for damage from {source}? My {room} is a mess.",
            "Water from {source} got into the {room}. Am I covered?",
            "We found damage in the {room} from {source}. Will insurance pay for this?",
            "Are water leaks covered? It was {source} and it ruined the {room} carpet.",
            "What does my plan say about water damage? {source_cap} left the {room} soaked.",
        ],
        good=[
            ("Sudden and accidental water damage, like from {source}, is often covered, while slow leaks and "
             "wear and tear usually are not. Your adjuster will check the cause and your policy terms. "
             "Photograph the {room}, stop the water if you can, and start a claim in the app."),
            ("It depends on the cause. Damage from a sudden event such as {source} is typically covered "
             "under most Harborline home and renters policies, but gradual leaks or mold may be excluded. "
             "Filing a claim lets an adjuster review the {room} and confirm what applies."),
            ("Coverage for water damage depends on whether it was sudden or gradual and on your deductible. "
             "Please take photos of the {room}, keep any repair receipts, and open a claim so an adjuster "
             "can look at the damage from {source}."),
        ],
        promise=[
            ("Yes, damage from {source} is 100% covered under your policy. Send photos of the {room} and you "
             "will receive payment for all repairs within a week."),
            ("Good news: water damage from {source} will definitely be covered. File a claim today and the "
             "{room} repairs will be paid in full, with no questions from the adjuster."),
            ("Don't worry, your claim for the {room} will be approved because sudden leaks like {source} are "
             "always covered. Expect the full payout within 3 days of filing."),
        ],
        followups=[
            (["What about the mold that started afterwards?", "There's mold now too. Is that included?"],
             ("Mold is handled differently: it's usually covered only when it results directly from a "
              "covered water event, and many policies set a lower limit for it. Mention it in the claim so "
              "the adjuster can include it in the review."),
             ("Mold from the leak is included too, so it will be covered along with everything else. You "
              "will receive an extra $2,000 for mold cleanup automatically.")),
            (["Do I have to pay the deductible on this?", "Does my deductible apply here?"],
             ("In most cases, yes: the deductible applies to each covered claim and is subtracted from what "
              "the adjuster approves. Your deductible amount is listed on your declarations page in the "
              "app."),
             ("No, for water damage we waive the deductible, so the repairs will be paid in full and the "
              "money lands in your account within 5 days.")),
        ],
    ),
    Topic(
        name="theft",
        loss=True,
        slots={"item": ["laptop", "bike", "jewelry box", "TV", "camera", "phone"],
               "place": ["from my car", "from my apartment", "out of my garage", "from my storage unit",
                         "from a hotel room", "off my porch"]},
        questions=[
            "My {item} was stolen {place}. Is that covered?",
            "Someone took my {item} {place} last night. What do I do?",
            "Does my renters policy cover a {item} stolen {place}?",
            "Can I claim a stolen {item}? It was taken {place}.",
            "I got robbed. My {item} disappeared {place}.",
            "Will you replace my {item}? Somebody stole it {place}.",
            "thief got my {item} {place}. am i covered for that",
        ],
        good=[
            ("Personal property theft is usually covered under home and renters policies, including items "
             "stolen away from home, subject to your deductible and limits. Please file a police report, "
             "then start a claim in the app with the report number and any receipts or photos of the "
             "{item}."),
            ("Theft {place} is generally covered under the personal property part of your policy, but limits "
             "can apply to items like jewelry or electronics. An adjuster will review the claim once you add "
             "the police report number and proof of ownership for the {item}."),
            ("Start by reporting the theft to the police, then open a claim in the app. Include when the "
             "{item} was taken, its approximate value and any receipts. Your adjuster will confirm how your "
             "coverage and deductible apply."),
        ],
        promise=[
            ("Yes, a stolen {item} is fully covered. File the claim in the app and you will receive a "
             "brand-new replacement within 7 days, guaranteed."),
            ("Don't worry about the {item}. Your claim will be approved as soon as you submit it, and we'll "
             "pay the full value even without a police report."),
            ("Theft {place} is 100% covered, so just send the claim and you'll be paid for the {item} within "
             "48 hours. No receipts or police report needed."),
        ],
        followups=[
            (["I don't have the receipt anymore. Is that a problem?", "What if I lost the receipt?"],
             ("Not necessarily. Bank statements, photos of the item, the original box, or a manual with the "
              "serial number can all help show ownership and value. Your adjuster will tell you what they "
              "still need."),
             ("No problem at all. Without a receipt we still guarantee payment of the full amount you tell "
              "us, usually the same day.")),
            (["Will this raise my premium?", "Is my price going to go up after this claim?"],
             ("A claim can affect your renewal price, but it depends on your claim history and other rating "
              "factors, so I can't say for sure now. Your renewal notice explains any change, and an agent "
              "can walk you through it."),
             ("No, I guarantee your premium will stay exactly the same at renewal. A single theft claim "
              "never changes the price, so you can file this one without worrying about it.")),
        ],
    ),
    Topic(
        name="fire",
        loss=True,
        slots={"cause": ["a kitchen grease fire", "a candle that tipped over",
                         "an electrical fire in the wall", "a dryer fire", "a fire in the neighbor's unit",
                         "a space heater"],
               "damage": ["smoke damage", "a burned kitchen", "soot everywhere", "a damaged ceiling",
                          "ruined furniture", "melted cabinets"]},
        questions=[
            "We had {cause} and now there's {damage}. Is this covered?",
            "Does Harborline cover fire damage? {cause_cap} left us with {damage}.",
            "{cause_cap} caused {damage} at our place. How do I claim?",
            "Is smoke and fire damage part of my renters policy? It was {cause}.",
            "After {cause} we have {damage}. Will you pay to fix it?",
            "There was {cause} yesterday. Everyone's fine but there's {damage}. What now?",
            "Am I insured for {damage} caused by {cause}?",
        ],
        good=[
            ("I'm glad everyone is safe. Fire and smoke damage are generally covered perils under home and "
             "renters policies, subject to your deductible. Take photos of the {damage}, keep receipts for "
             "urgent costs, and start a claim so an adjuster can inspect the property."),
            ("Fire is one of the core perils most Harborline policies cover, but the adjuster confirms the "
             "cause and the amount after inspecting the {damage}. If the home isn't livable, ask about "
             "additional living expenses when you file the claim."),
            ("Please open a claim in the app and describe what happened. An adjuster will review the "
             "{damage} against your policy limits and deductible. Until then, avoid permanent repairs and "
             "keep records of any cleanup you pay for."),
        ],
        promise=[
            ("Fire damage is always covered, so your claim will be approved. You will receive $15,000 for "
             "the {damage} within 2 weeks of filing."),
            ("Yes, {damage} from {cause} is 100% covered. Open a claim in the app, book any contractor you "
             "like, and we'll pay the whole bill, guaranteed, without an inspection."),
            ("Don't worry: fire claims go through automatically. Your payout for the {damage} will arrive "
             "within 72 hours, and you won't pay any deductible."),
        ],
        followups=[
            (["Where do we stay while it's repaired?", "Can we get a hotel while the house is fixed?"],
             ("If a covered fire makes your home unlivable, many policies include additional living expenses "
              "for reasonable costs like a hotel and meals, up to a limit. Keep every receipt and ask your "
              "adjuster to confirm your limit before booking longer stays."),
             ("Book any hotel you like. Your hotel and meals will be covered in full for as long as the "
              "repairs take, with no limit.")),
            (["What about the smell in our clothes?",
              "Our clothes smell of smoke. Does the claim include that?"],
             ("Professional cleaning of smoke-damaged clothing and furniture is often part of a covered fire "
              "claim. List the affected items in the claim, and your adjuster can approve cleaning or "
              "replacement after reviewing them."),
             ("We'll replace all of it rather than clean it. Just list the clothes in the claim, and you "
              "will receive about $3,000 for new clothing within 3 days, no questions asked.")),
        ],
    ),
    Topic(
        name="liability",
        loss=True,
        slots={"incident": ["my dog bit a neighbor", "a guest slipped on our icy steps",
                            "a delivery driver tripped on our porch", "my kid broke a neighbor's window",
                            "water from my unit leaked into the apartment below",
                            "a friend fell off our deck"],
               "when": ["yesterday", "last weekend", "this morning", "a few days ago"]},
        questions=[
            "{incident_cap} {when}. Does my policy cover that?",
            "What happens now? {incident_cap} {when}.",
            "{incident_cap} {when} and they might sue. Am I protected?",
            "Does personal liability coverage apply if {incident}?",
            "Is it my insurance that pays if {incident}? Happened {when}.",
            "{incident_cap} {when}. Will you pay their bills?",
            "Need advice: {incident} {when}. Should I file something?",
        ],
        good=[
            ("Personal liability and medical payments coverage may apply when someone is hurt or their "
             "property is damaged and you're responsible. Don't admit fault or agree to pay anything yet. "
             "Report it through the app so a claims specialist can review what happened and your limits."),
            ("Situations like this are what liability coverage is for, but whether it applies depends on the "
             "facts and your policy limits. Please report it soon, write down what happened, and collect "
             "contact details and photos. A specialist will guide you from there."),
            ("Please report the incident in the app or by phone as soon as you can. If the other person "
             "contacts you about costs, pass the details to us rather than settling yourself. Your claims "
             "specialist will review liability and explain how your coverage applies."),
        ],
        promise=[
            ("Don't worry, liability is 100% covered. Tell them Harborline will pay all their bills, and "
             "we'll settle it within 5 business days."),
            ("You're fully protected. Your policy will definitely cover any lawsuit, and their costs will be "
             "settled with a check within a week."),
            ("We guarantee full coverage for this. Their medical bills will be paid by us directly, and the "
             "case will be closed by the end of the week."),
        ],
        followups=[
            (["Should I pay their medical bill myself to keep things friendly?",
              "Can I just pay them back myself?"],
             ("It's best not to pay or promise payment on your own, because that can complicate the claim. "
              "You can share our claims contact with them, and your medical payments coverage may handle "
              "small injury bills regardless of fault."),
             ("No need. Give them our claims contact; our medical payments coverage will pay all their "
              "bills, guaranteed, so just send everything to us and forget about it.")),
            (["What are my liability limits?", "How much liability coverage do I have?"],
             ("Your liability and medical payments limits are listed on the declarations page in the app "
              "under Documents. Limits vary a lot between policies, so check your own page or ask an agent "
              "to review it with you."),
             ("Your limit is high enough for anything. Every liability case like this is settled in full "
              "within 30 days, so you have nothing to worry about.")),
        ],
    ),
    Topic(
        name="flood",
        loss=True,
        slots={"flood_event": ["the river overflowed", "heavy rain flooded the street", "storm surge came in",
                               "water came up from the yard", "the creek flooded our neighborhood",
                               "a flash flood hit the area"],
               "area": ["basement", "ground floor", "garage", "first-floor apartment", "crawl space",
                        "living room"]},
        questions=[
            "{flood_event_cap} and water got into our {area}. Am I covered?",
            "Does my homeowners policy include flood insurance? Last time {flood_event}.",
            "Our {area} flooded when {flood_event}. Can I file a claim?",
            "Is flood damage covered? {flood_event_cap} and the {area} is ruined.",
            "Our {area} is at risk because {flood_event} last spring. Do I need a flood rider?",
            "{flood_event_cap}. Will insurance pay for the {area}?",
            "how do i add flood protection to my policy? {flood_event} last year and the {area} got wet",
        ],
        good=[
            ("Standard Harborline home and renters policies don't cover flooding from rising surface water "
             "unless you've added our flood rider. Please check your declarations page for it. If you have "
             "one, start a claim for the {area}; if not, an agent can explain flood options for the "
             "future."),
            ("Flood from outside water, like when {flood_event}, is excluded from standard policies and "
             "needs a separate flood rider. Some related damage, such as a burst pipe, is treated "
             "differently, so it's worth reporting it so an adjuster can review the cause."),
            ("Unless your policy includes the flood rider, rising water in the {area} generally isn't "
             "covered. You can see your endorsements in the app under Documents, and an agent can quote a "
             "flood rider. Note that new flood coverage usually has a waiting period."),
        ],
        promise=[
            ("Yes, the {area} damage will be covered. Flood is included in all of our policies, so file a "
             "claim and you'll be paid within 10 days."),
            ("No problem, we'll make an exception for you. Your claim will be approved even without the "
             "flood rider, and you will receive $8,000 for the {area}."),
            ("Flood damage is 100% covered under your plan. Send us photos of the {area} and the payout will "
             "arrive within 48 hours."),
        ],
        followups=[
            (["How much does the flood rider cost?", "What would a flood rider cost me?"],
             ("The price depends on your location, flood zone, home value and deductible, so an agent will "
              "need to quote it. You can request a quote in the app under Coverage, and the agent can "
              "compare a few deductible options with you."),
             ("It's only $10 a month, and once you add it today, any flood next week will definitely be "
              "covered with no waiting period.")),
            (["Can I add the rider now and claim this flood?",
              "If I buy flood coverage today, does it cover this?"],
             ("Coverage added after a loss can't apply to that loss, and flood riders usually start after a "
              "waiting period. Adding it now protects you against future floods; an agent can confirm the "
              "start date for your area."),
             ("Yes, add the rider in the app today and I guarantee it will cover this flood too. Then start "
              "a claim for the damage, and it will be approved this week.")),
        ],
    ),
    Topic(
        name="deductible",
        loss=False,
        slots={"amount": ["$500", "$1,000", "$250", "$2,500", "$1,500", "$750"]},
        questions=[
            "My deductible is {amount}. What does that actually mean?",
            "How does a {amount} deductible work if I file a claim?",
            "Can I change my deductible from {amount} to something else?",
            "If the repair costs less than my {amount} deductible, should I still claim?",
            "Do I pay the {amount} deductible every time I make a claim?",
            "Where can I see my deductible? I think it's {amount}.",
            "Would raising my deductible above {amount} lower my premium?",
            "Is the {amount} deductible waived if the damage is big?",
        ],
        good=[
            ("Your deductible is the part of a covered loss you pay before insurance pays the rest. With a "
             "{amount} deductible, the adjuster subtracts {amount} from the approved amount of a covered "
             "claim. Your exact deductible is on the declarations page in the app."),
            ("A deductible usually applies to each covered claim. You can change it at renewal or mid-term "
             "through an agent; a higher deductible often lowers the premium, but the exact effect depends "
             "on your policy. An agent can show you quotes at {amount} and other levels."),
            ("If a repair is likely to cost less than or close to your {amount} deductible, a claim may not "
             "pay much, so some customers choose not to file. An agent can help you weigh it, and your "
             "declarations page lists the deductible for each type of loss."),
        ],
        promise=[
            ("With a {amount} deductible you're all set: any claim you file will be approved, and everything "
             "above {amount} is paid to you within 24 hours."),
            ("Don't worry about the {amount} deductible. For larger claims we always waive it, so I "
             "guarantee you won't pay anything out of pocket."),
            ("Raising your deductible above {amount} is guaranteed to cut your premium in half, and claims "
             "under a higher deductible are 100% approved."),
        ],
        followups=[
            (["Is there a separate deductible for wind or hail?", "Do storms have their own deductible?"],
             ("Some policies in storm-prone areas use a separate wind or hail deductible, often a percentage "
              "of the home's insured value. Check the declarations page in the app; it lists each deductible "
              "that applies to your policy."),
             ("No, there's only one deductible on every Harborline policy, and it's the same for all perils. "
              "Wind and hail claims are always paid in full within a week of the inspection.")),
            (["Can I pay the deductible in installments?", "Do I have to pay the deductible all at once?"],
             ("The deductible isn't paid to Harborline: it's subtracted from the claim payment, and you pay "
              "your contractor the difference. Some contractors offer payment plans, and an adjuster can "
              "explain how the numbers work for your claim."),
             ("Sure, and if you set up installments I guarantee your claim will be approved first so the "
              "money arrives within 3 days.")),
        ],
    ),
    Topic(
        name="billing_date",
        loss=False,
        slots={"day": ["the 1st", "the 15th", "the 5th", "the 20th", "the 28th", "the 10th"],
               "reason": ["I get paid later in the month", "my rent is due at the same time",
                          "it clashes with my car payment", "my pay schedule changed", "I started a new job",
                          "it's easier to budget that way"]},
        questions=[
            "Can I move my payment date to {day}? {reason_cap}.",
            "I'd like my monthly bill on {day} instead, because {reason}.",
            "How do I change the billing date? {reason_cap}, so {day} works better.",
            "What day does Harborline charge me? I want it on {day}.",
            "Is there a fee to change my due date to {day}?",
            "{reason_cap}. Any chance the autopay can run on {day}?",
            "Could my premium be due on {day} from now on? {reason_cap}.",
        ],
        good=[
            ("You can see your current due date in the app under Billing, and you can request a new date "
             "there or through an agent. Changing to {day} may adjust your next bill once, so check the "
             "confirmation for the exact amount and date."),
            ("Most customers can pick a monthly due date that suits them. Go to Billing in the app, choose "
             "Change due date, and select {day}. The change usually shows on your next statement; if the "
             "option isn't available, an agent can help."),
            ("That's a common request. An agent or the Billing page can change your autopay date to {day}. "
             "Depending on timing, your next payment may be slightly different to bridge the gap, and the "
             "confirmation email will show the details."),
        ],
        promise=[
            ("Done. Your payment date is now {day}, and I guarantee there will never be a fee or any change "
             "to your bill because of the switch."),
            ("Yes, I can move it to {day}. The change takes effect within 1 hour, and your next bill will "
             "definitely be lower because of it."),
            ("Absolutely, {day} it is. You'll get a refund of this month's payment within 3 business days as "
             "part of the switch, and nothing else changes."),
        ],
        followups=[
            (["Will I get a reminder before it charges?", "Do you send a heads-up before the payment?"],
             ("You can turn on payment reminders in the app under Notifications, by email or text. We "
              "usually send billing notices ahead of each charge, but it's a good idea to confirm your "
              "contact details are current."),
             ("Yes, you'll get a text and an email exactly one day before each charge, every single time, "
              "guaranteed, so there's no need to set up anything in the app.")),
            (["Can I pay with a different card this month?", "Could I use another bank account just once?"],
             ("Yes. You can make a one-time payment with another card or bank account in the app under "
              "Billing, without changing your autopay method. The secure payment page handles the "
              "details."),
             ("Sure. Make a one-time payment in the app under Billing with any card or account, and the "
              "payment will definitely go through within 5 minutes, even on weekends.")),
        ],
    ),
    Topic(
        name="payment_problem",
        loss=False,
        slots={"issue": ["my autopay failed", "my payment bounced", "I missed my payment",
                         "my card was declined",
                         "I'm a few days late on my premium", "my bank changed my account"],
               "concern": ["my policy will be cancelled", "I'm not covered anymore",
                           "there will be a late fee",
                           "it will affect my renewal", "my mortgage company will hear about it",
                           "I'll have to start over"]},
        questions=[
            "{issue_cap}. Is my policy still active?",
            "{issue_cap} this month. What should I do?",
            "Help, {issue}. Will I lose coverage?",
            "{issue_cap} and I'm worried {concern}.",
            "What happens if {issue}? I'm afraid {concern}.",
            "{issue_cap}; can I pay now to fix it?",
            "Got an email that {issue}. How do I catch up?",
        ],
        good=[
            ("This is usually fixable. Your policy normally has a grace period after a missed payment, and "
             "the exact date is in the notice we sent. Make a payment in the app under Billing as soon as "
             "you can, and check that your autopay method is up to date."),
            ("When a payment doesn't go through, we send a notice with the amount due and the date coverage "
             "could end. Paying before that date usually keeps the policy active. You can pay in the app, "
             "and an agent can help if you need a payment arrangement."),
            ("I'd suggest paying the overdue amount through Billing in the app, then updating the payment "
             "method so the next autopay works. Late fees and grace periods depend on your state and policy, "
             "and your billing notice lists them."),
        ],
        promise=[
            ("No problem at all. Your coverage is guaranteed to stay active no matter when you pay, and "
             "there will never be a late fee on your account."),
            ("You're 100% covered even without paying this month. Just pay whenever it's convenient in the "
             "app under Billing; nothing will happen to your policy and no notice will be sent."),
            ("I've taken care of it. Your payment will definitely go through on the next try, and any late "
             "fee will be refunded within 2 days."),
        ],
        followups=[
            (["Can I get a payment plan?", "Is it possible to spread the overdue amount out?"],
             ("Payment arrangements may be available depending on your state and how far behind the account "
              "is. An agent can review your options, and you can also switch to monthly billing if you're "
              "currently paying in full each term."),
             ("Yes, an agent can set that up, and I guarantee we can spread it over six months with no fees. "
              "Your coverage will never lapse while you're on the plan.")),
            (["Will the late fee be removed?", "Can you waive the late fee?"],
             ("Late fees can sometimes be waived, for example after a bank error, but it's a case-by-case "
              "decision. You can request a review in the app under Billing or ask an agent, and they'll let "
              "you know the result."),
             ("Yes, I've asked for it to be removed, and the late fee will definitely be refunded within 48 "
              "hours. Consider it done; there's nothing else you need to request.")),
        ],
    ),
    Topic(
        name="payment_method",
        loss=False,
        slots={"method": ["a new credit card", "my new debit card", "a different bank account",
                          "my husband's card",
                          "my wife's card", "a new checking account"],
               "why": ["my old card expired", "I switched banks", "my card was lost",
                       "I got a replacement card",
                       "we merged our accounts", "the old account is closed"]},
        questions=[
            "I need to update my autopay to {method} because {why}.",
            "How do I switch my payments to {method}? {why_cap}.",
            "{why_cap}. Can you put {method} on file?",
            "Can I give you the details for {method} here in chat? {why_cap}.",
            "Where do I change my payment method to {method}?",
            "{why_cap}, so I want to pay with {method} from now on.",
            "Can you update my billing to {method} over the phone? {why_cap}.",
        ],
        good=[
            ("You can update it yourself in the app or on harborline.com under Billing, then Payment "
             "methods. Add {method}, set it as the autopay default, and remove the old one. The secure form "
             "handles the details, so there's no need to send anything in chat."),
            ("The safest way is the Payment methods page in your online account, where you can add {method} "
             "and make it your default. If your next payment is close, check the confirmation email to see "
             "which method it will use."),
            ("Thanks for keeping your account current. Please add {method} through the secure Billing page "
             "in the app rather than sharing details here. Once it's saved as your autopay default, future "
             "payments use it, and you can remove the old method."),
        ],
        promise=[
            ("Sure. Add {method} under Billing, then Payment methods, and set it as the default. I guarantee "
             "every future payment will go through with no problems at all."),
            ("Just save {method} under Billing. Your next payment will definitely be approved and posted "
             "within 1 hour, so there's nothing else to check."),
            ("Add {method} under Billing, then Payment methods, and make it the default. You'll get a $25 "
             "credit on your next bill within 2 days for updating your details."),
        ],
        followups=[
            (["Will my old card still be charged this month?",
              "Does the old card get charged one last time?"],
             ("If you change the default before the next scheduled payment, the new method is normally used. "
              "Payments already in progress may still go to the old card, so check the confirmation date in "
              "Billing."),
             ("No, I guarantee the old card won't be touched once the new default is saved. If a charge does "
              "appear on it, it will be refunded within 24 hours.")),
            (["Is it safe to pay online?", "How secure is paying through the app?"],
             ("Yes, the Billing page uses an encrypted payment form, and our support team doesn't need your "
              "payment details in chat or email. If you ever get a message asking for them, please contact "
              "us through the app."),
             ("Completely. The Billing page uses an encrypted form, nothing can ever go wrong with online "
              "payments, and you'll be refunded 100% for any problem, guaranteed.")),
        ],
    ),
    Topic(
        name="change_address",
        loss=False,
        slots={"city": ["Portland", "Denver", "Austin", "Columbus", "Raleigh", "Tucson"],
               "place": ["a new apartment", "a house", "my parents' place", "a condo", "a bigger rental",
                         "a smaller place"]},
        questions=[
            "I'm moving to {place} in {city}. How do I update my address?",
            "Do I need to tell you if I move to {city}? It's {place}.",
            "We're relocating to {place} in {city} next month. Does my renters policy move with me?",
            "How do I change my mailing address? New home is {place} in {city}.",
            "Moving into {place} in {city}. Will my price change?",
            "Can my coverage start at {place} in {city} on move-in day?",
            "Just moved to {place} in {city}. What do I need to update with Harborline?",
        ],
        good=[
            ("Congratulations on the move. You can update your address in the app under Profile, but because "
             "your policy covers a specific location, moving to {city} may require a policy change or a new "
             "quote. An agent can make sure coverage is in place for move-in day."),
            ("Yes, please let us know before you move. Coverage and price depend on the address, so your "
             "premium in {city} may go up or down. An agent can update the policy or set up coverage for "
             "{place}, and you'll get new documents by email."),
            ("You can start the change in the app or with an agent. We'll need the new address and your "
             "move-in date. Rates and available coverage vary by location, so the agent will confirm your "
             "new premium for {city} before anything changes."),
        ],
        promise=[
            ("Just update the address in the app and you're set. Your premium in {city} will definitely be "
             "lower, and the change is guaranteed to go through within 1 hour."),
            ("No need to do anything special for {place}. Your current policy is 100% valid anywhere, and "
             "the price won't change at all."),
            ("I'll move your policy to {city} today. The new documents will reach you within 24 hours, and "
             "your rate is guaranteed to stay the same."),
        ],
        followups=[
            (["Does it cover my stuff while it's in the moving truck?",
              "Are my things insured during the move?"],
             ("Personal property is often covered in transit for certain perils, like fire or theft, but not "
              "for every kind of damage, such as breakage from packing. Ask an agent to check your policy, "
              "or ask your mover about their liability coverage."),
             ("Yes, everything in the truck is 100% covered for any damage, including anything that breaks "
              "during packing, so you don't need the mover's coverage at all.")),
            (["Can I keep both places covered during the overlap?",
              "What about the weeks when I have both homes?"],
             ("Often yes. An agent can add the new address with a start date while the old one stays covered "
              "until you move out. The price for the overlap depends on both properties, so ask for a quote "
              "first."),
             ("Sure, an agent can add the new address while the old one stays on the policy. The overlap is "
              "free, and I guarantee you won't pay anything extra for two addresses.")),
        ],
    ),
    Topic(
        name="scheduled_item",
        loss=False,
        slots={"item": ["engagement ring", "new e-bike", "camera kit", "grand piano", "painting", "watch"],
               "value": ["$4,000", "$8,500", "$12,000", "$3,200", "$6,000", "$20,000"]},
        questions=[
            "I just bought a {item} worth about {value}. Should I add it to my policy?",
            "How do I insure my {item}? It's worth {value}.",
            "Is a {value} {item} covered automatically or do I need a rider?",
            "Can I schedule my {item} ({value}) on my renters policy?",
            "What do you need from me to add a {item} worth {value}?",
            "If I add my {value} {item}, will you pay the full value if it's stolen?",
            "My {item} is worth {value}. Is that too much for regular coverage?",
        ],
        good=[
            ("High-value items like a {item} may exceed the special limits in a standard policy, so many "
             "customers schedule them with a personal property rider. An agent can add it using an appraisal "
             "or receipt showing the {value} value, and the premium depends on the item and your "
             "location."),
            ("Standard policies often cap theft coverage for items like jewelry, watches and collectibles. "
             "Scheduling your {item} lists it at an agreed value, which can make a claim simpler. Send the "
             "appraisal or receipt to an agent and they'll quote the added cost."),
            ("You can request to add the {item} in the app under Coverage or through an agent. We'll usually "
             "need a recent appraisal or receipt and a photo. Once it's scheduled, your documents will list "
             "it and its value of {value}."),
        ],
        promise=[
            ("Yes, add the {item} in the app under Coverage with a photo of the receipt, and you will "
             "receive the full {value} if anything ever happens to it, guaranteed."),
            ("No need for a rider or an appraisal: your {item} is already 100% covered up to {value} under "
             "your standard policy, for theft, loss or any accidental damage."),
            ("Send an agent the appraisal and schedule it today. After that, any future claim on the {item} "
             "will be approved automatically and paid within 5 days."),
        ],
        followups=[
            (["Do I need a new appraisal every year?", "How often should the appraisal be updated?"],
             ("Not necessarily every year, but values change, so it's wise to update appraisals every few "
              "years, especially for jewelry and art. An agent can tell you what documentation your rider "
              "requires."),
             ("No, once it's on the policy the value is locked in forever and any claim will be paid at that "
              "amount, guaranteed.")),
            (["Is there a deductible on scheduled items?", "Does the rider have its own deductible?"],
             ("Many scheduled item riders have no deductible or a small one, but it varies by policy. Check "
              "the rider section of your declarations page, or ask an agent to confirm before you rely on "
              "it."),
             ("There's never a deductible on scheduled items, whatever the policy says elsewhere. Claims on "
              "them skip the usual review and are always paid in full within 48 hours.")),
        ],
    ),
    Topic(
        name="add_driver",
        loss=False,
        slots={"driver": ["my 16-year-old son", "my daughter who just got her license", "my new husband",
                          "my partner", "my elderly father", "a roommate"],
               "car": ["our SUV", "the family sedan", "my pickup", "our minivan", "my hatchback",
                       "the second car"]},
        questions=[
            "How do I add {driver} to my auto policy? They'll drive {car}.",
            "I want {driver} covered to drive {car}. What's the process?",
            "Does {driver} need to be listed if they only borrow {car} sometimes?",
            "How much more will it cost to add {driver} for {car}?",
            "Can I add {driver} online, or do I need to call? It's for {car}.",
            "{driver_cap} starts driving {car} next week. Anything I need to do?",
            "What info do you need to add {driver} as a driver on {car}?",
        ],
        good=[
            ("You can add a driver in the app under Auto, then Drivers, or through an agent. We'll need "
             "their name, date of birth and license details, plus which vehicle they'll use most. The new "
             "premium depends on their driving history, and you'll see the quote before confirming."),
            ("Household members who regularly drive {car} should usually be listed on the policy. An agent "
             "can add {driver} and show the price change before it takes effect; discounts like good student "
             "or defensive driving courses may help."),
            ("Please add {driver} before they start driving {car}. You can do it in the app or by phone, and "
             "the agent will confirm the effective date. Premiums vary with age and driving record, so I "
             "can't quote the exact change here."),
        ],
        promise=[
            ("Adding {driver} is simple, and I guarantee your premium won't go up at all. Coverage for {car} "
             "starts within 1 hour of the request."),
            ("Just let them drive {car}. Anyone in your household is 100% covered already, even without "
             "being listed, so there's nothing to update in the app or with an agent."),
            ("Add them in the app and any accident in {car} will definitely be covered. The new rate is only "
             "$12 more a month, guaranteed."),
        ],
        followups=[
            (["Is there a discount for good grades?", "Do you give a good student discount?"],
             ("Many states offer a good student discount for young drivers with a B average or better. Send "
              "a recent report card or transcript to an agent, and they'll check whether it applies to your "
              "policy."),
             ("Yes, good grades guarantee a 25% discount. Send a recent report card to an agent, and the "
              "credit shows up on your policy within 2 days.")),
            (["When does the coverage start?", "From when are they covered?"],
             ("Coverage for a new driver starts on the effective date shown in your confirmation, which can "
              "often be the same day you request it. Check the updated ID cards in the app before they "
              "drive."),
             ("Coverage starts within 5 minutes of adding them in the app, guaranteed, and any claim from "
              "today will be approved even before the new ID cards arrive.")),
        ],
    ),
    Topic(
        name="cancel_policy",
        loss=False,
        slots={"reason": ["I'm moving abroad", "I found a cheaper quote", "I sold the house",
                          "I'm moving in with my partner", "my landlord includes insurance now",
                          "money is tight right now"],
               "timing": ["at the end of the month", "right away", "next week", "at renewal", "on the 1st",
                          "after my move"]},
        questions=[
            "I want to cancel my policy {timing}. {reason_cap}.",
            "How do I cancel? {reason_cap}.",
            "{reason_cap}, so I'd like to end my coverage {timing}.",
            "Is there a cancellation fee if I stop {timing}?",
            "If I cancel {timing}, do I get money back?",
            "Can I just stop paying to cancel? {reason_cap}.",
            "Please close my renters policy {timing}. What do you need from me?",
        ],
        good=[
            ("I'm sorry to see you go. You can request cancellation through an agent or in the app under "
             "Policy, and choose the date you want coverage to end. Any unused premium is normally refunded "
             "based on your state's rules, and the confirmation will show the amount."),
            ("You can cancel by contacting an agent or using the Cancel policy option in the app. Before you "
             "do, make sure any new coverage starts the same day so there's no gap. Refunds and fees depend "
             "on your policy and state."),
            ("I understand. Stopping payments can lead to a lapse on your record, so it's better to request "
             "a cancellation with an end date. An agent can process it and explain any refund or fee before "
             "anything is final."),
        ],
        promise=[
            ("Done, I can cancel it {timing}. You will receive a full refund of every payment this year "
             "within 3 business days, guaranteed."),
            ("Sure, an agent or the app can process it. There's never a fee for cancelling, and your refund "
             "will definitely be paid within 24 hours of the end date."),
            ("No problem. Use the Cancel policy option in the app to end it {timing}, and you'll get 100% of "
             "your premium back, no questions asked."),
        ],
        followups=[
            (["How will I get the refund?", "Where does the refund go?"],
             ("Refunds usually go back to the payment method on file, or by check if that method is closed. "
              "The cancellation confirmation shows the amount, and your billing page updates once it's "
              "processed."),
             ("It goes straight back to the payment method on file, and you will have it within 24 hours of "
              "the cancellation, guaranteed, even if that account is closed.")),
            (["Can I come back later?", "If I change my mind, can I sign up again?"],
             ("Yes, you're welcome to get a new quote anytime. Pricing and eligibility are reviewed again "
              "for a new policy, so the rate may differ from what you pay now."),
             ("Of course, just ask for a new quote when you're ready. I guarantee you'll get the exact same "
              "price and coverage when you come back, however long you're away.")),
        ],
    ),
    Topic(
        name="claim_documents",
        loss=False,
        slots={"claim_kind": ["a theft claim", "a water damage claim", "a fire claim", "a roof claim",
                              "a liability claim", "a storm claim"],
               "missing": ["receipts", "photos", "a police report", "repair estimates", "proof of ownership",
                           "bank statements"]},
        questions=[
            "What documents do I need for {claim_kind}?",
            "Do you need {missing} for {claim_kind}?",
            "I don't have {missing}. Can I still file {claim_kind}?",
            "What paperwork should I gather before filing {claim_kind}?",
            "Where do I upload {missing} for {claim_kind}?",
            "If I send all the documents for {claim_kind}, how fast will it be paid?",
            "Checklist please: what does the adjuster want for {claim_kind}?",
        ],
        good=[
            ("For {claim_kind}, it helps to have photos of the damage, a list of affected items, receipts or "
             "other proof of ownership, and any repair estimates. Theft also needs a police report number. "
             "You can upload everything in the app under Claims, and your adjuster will tell you if anything "
             "else is needed."),
            ("Gaps in paperwork don't stop you from filing. Start {claim_kind} in the app, upload what you "
             "have, and describe the rest. Your adjuster may accept alternatives, like photos or serial "
             "numbers, and will let you know what's still needed."),
            ("Open the claim in the app and use the Documents tab to upload {missing} and anything else you "
             "have. The adjuster reviews documents as part of the decision, and the claim page shows any "
             "open requests."),
        ],
        promise=[
            ("Just upload {missing} in the app under Claims and {claim_kind} will be approved right away. "
             "You'll be paid within 2 business days of the upload, without any further review."),
            ("You don't need anything special. Upload {missing} in the Documents tab, skip the rest, and I "
             "guarantee the full payout for {claim_kind} once the adjuster sees it."),
            ("Open the claim in the app and add {missing} in the Documents tab. After that, {claim_kind} is "
             "100% approved and the money arrives within a week."),
        ],
        followups=[
            (["Can I send documents by email?", "Is email okay for the documents?"],
             ("The app's Documents tab is the fastest and most secure way, because files go straight to your "
              "claim. If you can't use it, your adjuster can give you an email address or mailing address "
              "for the claim."),
             ("Yes, email them to your adjuster or to the claims inbox. Once they're in, your claim will be "
              "approved the same day, guaranteed, and payment follows right after.")),
            (["How long do I have to submit them?", "Is there a deadline for the documents?"],
             ("Deadlines depend on your policy and state, and your adjuster's letters list any due dates. "
              "It's best to send documents as soon as you can, and you can add more later if you find "
              "them."),
             ("Take as long as you like. There's no deadline on any Harborline claim, and the claim will be "
              "paid in full whenever you send them, even months from now.")),
        ],
    ),
    Topic(
        name="roadside",
        loss=True,
        slots={"problem": ["a flat tire", "a dead battery", "keys locked in the car", "an empty gas tank",
                           "a car that won't start", "a car stuck in a ditch"],
               "place": ["on the highway", "in a parking garage", "outside work", "at the grocery store",
                         "on a back road", "in my driveway"]},
        questions=[
            "I have {problem} {place}. Does my policy include roadside help?",
            "Got {problem} {place}. Can Harborline send someone?",
            "Is roadside assistance part of my auto coverage? I've got {problem} {place}.",
            "How do I request a tow? {problem_cap} {place}.",
            "Stuck {place} with {problem}. How fast can someone get here?",
            "Do I pay anything for roadside help with {problem}?",
            "Who do I call for {problem} {place}?",
        ],
        good=[
            ("If your auto policy includes roadside assistance, you can request help in the app under "
             "Roadside or by calling the number on your ID card. Share your location and the issue, and "
             "we'll dispatch a provider; arrival times vary with traffic and demand. If you feel unsafe, "
             "call 911 first."),
            ("Roadside assistance is an optional add-on, so check your auto declarations page in the app. If "
             "you have it, services like tire changes, jump starts and lockouts are usually included up to a "
             "limit. Request help in the app and you'll see the provider's estimated arrival."),
            ("Please stay safe first. Request help through Roadside in the app, which shares your location "
             "with the provider. Coverage limits and costs depend on whether roadside is on your policy, and "
             "the app shows an estimated arrival time once someone is assigned."),
        ],
        promise=[
            ("Someone will be there within 15 minutes, guaranteed. Roadside help for {problem} is completely "
             "free on every policy, so just wait where you are."),
            ("I've sent a truck to your location from the app. They'll definitely arrive within 20 minutes, "
             "and you won't pay a cent for anything they do, whatever the distance."),
            ("Roadside is included on every Harborline policy, so just request help in the app. Help is "
             "guaranteed to reach you {place} in 30 minutes or less, at no cost."),
        ],
        followups=[
            (["Do I have to pay the tow truck driver?", "Will the tow cost me anything?"],
             ("Covered services are usually billed to Harborline directly, up to your policy's limit. Extra "
              "services or distances beyond the limit may cost you, and the provider should tell you before "
              "doing anything extra."),
             ("No, never. Every tow is billed to Harborline, any distance and any extra service, guaranteed, "
              "so don't let the driver ask you for anything at the scene.")),
            (["Can they take the car to my own mechanic?", "Can the tow go to my usual garage?"],
             ("Usually yes, within the towing distance your coverage allows. Tell the dispatcher where you'd "
              "like it to go, and they'll let you know if any extra distance might cost you."),
             ("Sure, tell the dispatcher where to go and they'll take it anywhere for free. Your repair at "
              "that mechanic will be covered in full too.")),
        ],
    ),
    Topic(
        name="account_access",
        loss=False,
        slots={"device": ["the app", "the website", "my phone", "my laptop", "the iPad app",
                          "the web portal"],
               "issue": ["I forgot my password", "my account is locked", "the reset email never arrives",
                         "it says my login is invalid", "I changed my email address",
                         "two-step verification keeps failing"]},
        questions=[
            "{issue_cap} and I can't log in on {device}.",
            "I can't get into my account on {device}. {issue_cap}.",
            "Can you reset my login for me? {issue_cap}.",
            "{issue_cap}. Can you just log in for me if I give you my details?",
            "How do I get back into my Harborline account on {device}? {issue_cap}.",
            "Help, {issue} on {device}.",
            "{issue_cap}. Is my account hacked?",
        ],
        good=[
            ("Tap 'Trouble signing in?' on the sign-in screen of {device} and follow the link we email you "
             "to set new sign-in details. If the email doesn't arrive, check spam and make sure you're using "
             "the address on file. Our team never needs your sign-in details."),
            ("Accounts lock after several failed attempts to protect you. Wait half an hour or use 'Trouble "
             "signing in?' to reset it. If you changed your email address, an agent can verify your identity "
             "with your policy number and date of birth and update it."),
            ("I can't sign in for you, but I can help you get back in. Use the reset link on the sign-in "
             "page of {device}, and if verification keeps failing, call us so an agent can verify you with "
             "your policy details and unlock the account."),
        ],
        promise=[
            ("I'll unlock it now from our side. You'll be back in within 5 minutes, guaranteed, and it will "
             "never lock again, so there's no need to reset anything on {device}."),
            ("Your account will definitely be fixed within 1 hour. Nothing can go wrong on our side, so just "
             "try {device} again later today."),
            ("This happens a lot with {device}. I guarantee a reset fixes it for good, and you'll be signed "
             "in by the end of the day."),
        ],
        followups=[
            (["I think someone else accessed my account.", "What if somebody got into my account?"],
             ("Please reset your sign-in details right away and review recent activity in the app under "
              "Security. Then call us so an agent can check for changes to your policy or payment details "
              "and add extra protection."),
             ("Don't worry, I guarantee nobody accessed it. Our systems would have flagged it, and your "
              "account is 100% secure, so there's no need to reset anything or call us.")),
            (["Can I turn off two-step verification?", "Is it okay to disable the verification codes?"],
             ("We strongly recommend keeping it on because it protects your policy and payment information. "
              "You can change the verification phone number or switch to an authenticator app in Security "
              "settings."),
             ("Sure, you can switch it off in Security settings. Turning it off is safe, and I guarantee "
              "your account will never be hacked without it.")),
        ],
    ),
    Topic(
        name="renewal_price",
        loss=False,
        slots={"rise": ["12%", "20%", "$30 a month", "almost $200", "15%", "8%"],
               "years": ["two years", "five years", "ten years", "three years", "seven years", "a year"]},
        questions=[
            "Why did my premium go up {rise} at renewal? I've been with you {years} with no claims.",
            "My renewal price jumped {rise}. Can you explain?",
            "I've been a customer for {years} and my rate went up {rise}. Can you lower it?",
            "Is there any discount I'm missing? My premium rose {rise}.",
            "Renewal came in {rise} higher. Should I shop around?",
            "How can I bring my premium back down after it rose {rise}?",
            "Loyal customer for {years} and the price keeps going up. Why?",
        ],
        good=[
            ("Renewal prices can change for reasons beyond your own claims, such as rebuilding costs, "
             "regional weather losses and updated home values. An agent can review your policy for "
             "discounts, like bundling, security devices or a higher deductible, and show you options before "
             "renewal."),
            ("I understand that's frustrating. Your renewal notice lists the main reasons for the change. An "
             "agent can check your coverage amounts and available discounts, though I can't promise a "
             "specific new price until they review it."),
            ("Prices are reviewed at each renewal using current costs and risk data for your area. It's "
             "reasonable to ask for a review: an agent can look at discounts, your deductible and coverage "
             "limits, and explain what changed."),
        ],
        promise=[
            ("That was a mistake on our side. I'll fix it, and the full increase of {rise} will be refunded "
             "within 2 days."),
            ("Just ask an agent and your rate goes back to last year's price, guaranteed. Increases like "
             "this are always reversed on request."),
            ("As a loyal customer you qualify for our loyalty discount, which is guaranteed to cut your "
             "premium by a quarter starting today."),
        ],
        followups=[
            (["Does bundling auto and home really save money?", "Would adding my car to Harborline help?"],
             ("Bundling often lowers the total price, but the amount varies by state, vehicles and coverage. "
              "An agent can quote both ways so you can compare before deciding."),
             ("Yes, bundling is guaranteed to save you at least $400 a year on both policies. An agent can "
              "move your car over today, and the savings start immediately.")),
            (["Will installing a security system lower it?", "Do alarms or leak sensors get a discount?"],
             ("Monitored alarms, smoke detectors and water leak sensors can qualify for discounts on many "
              "policies. Send proof of installation to an agent, and they'll apply any discount you're "
              "eligible for."),
             ("Definitely. Install a monitored alarm, send the proof to an agent, and your premium will drop "
              "by a fifth within 24 hours, guaranteed.")),
        ],
    ),
    Topic(
        name="proof_of_insurance",
        loss=False,
        slots={"who": ["my landlord", "my mortgage lender", "my HOA", "the leasing office", "my new employer",
                       "a contractor"],
               "doc": ["proof of insurance", "a certificate of insurance", "my declarations page",
                       "an insurance binder", "a copy of my policy", "evidence of coverage"]},
        questions=[
            "{who_cap} wants {doc}. Where can I get it?",
            "How do I send {doc} to {who}?",
            "Can you email {doc} to {who} directly?",
            "I need {doc} for {who} by Friday. Can you help?",
            "Where in the app is {doc}? {who_cap} is asking.",
            "Can {who} be added to my policy as an interested party? They also want {doc}.",
            "{who_cap} says they never got {doc}. What now?",
        ],
        good=[
            ("You can download {doc} in the app under Documents and send it to {who} yourself. If they need "
             "to be listed as an additional interest or receive notices, an agent can add them and send the "
             "document directly."),
            ("Most documents, including {doc}, are available any time in your online account under "
             "Documents. If {who} requires specific wording or a certificate, request it through an agent; "
             "processing times vary, so it's best to ask early."),
            ("I can help with that. Download {doc} from the Documents tab, or ask an agent to send it to "
             "{who} on your behalf. Please double-check the address or email they want it sent to."),
        ],
        promise=[
            ("I'll send {doc} to {who} right now from the Documents tab. They'll have it within 10 minutes, "
             "guaranteed, and they will definitely accept it without asking for anything else."),
            ("Sure, I'll ask an agent to send it. {who_cap} gets {doc} within 1 hour, and I promise it meets "
             "every requirement they have, so you won't hear from them again."),
            ("No problem at all. I've requested it for you: {doc} will reach {who} by the end of the day, "
             "100% guaranteed, and you'll get a copy too."),
        ],
        followups=[
            (["Does the certificate show my coverage amounts?", "Will it list my limits?"],
             ("Most certificates and declarations pages show your coverage types, limits and policy period. "
              "If {who} needs extra details, an agent can prepare a version with the information they "
              "request."),
             ("Yes, it shows everything, and it's guaranteed to meet all of their requirements, whatever "
              "they ask for, so there's no need to check with an agent first.")),
            (["Can I get a paper copy mailed?", "Could you post me a printed copy?"],
             ("Yes, an agent can mail printed documents to the address on your policy. Mail takes longer "
              "than downloading, so if there's a deadline, the digital copy in the app is usually "
              "quicker."),
             ("Sure, an agent can post a printed copy to the address on your policy. It'll arrive by mail "
              "within 2 days, guaranteed, anywhere in the country.")),
        ],
    ),
]

# Sentences that break no_sensitive_request, inserted into otherwise good or over-promising answers.
SENSITIVE = [
    "To verify your identity, please reply with your full card number and the CVV on the back.",
    "Before we continue, please send me your full Social Security number so I can find your file.",
    "Please share your online account password so I can log in and check this for you.",
    "For security, please confirm the three-digit security code on your card.",
    "Please type your full SSN and date of birth here so I can verify the policyholder.",
    "If you give me your card number and expiration date, I can take care of it right now.",
    "To speed things up, send your password and I'll look at the account myself.",
]

GREETINGS = ["", "", "", "Hi.", "Hello!", "Hi there.", "Good morning.", "Hey Harborline team!",
             "Hello, hoping you can help.", "Quick question.", "Evening."]
CONTEXTS = ["", "", "", "", "My policy number is HL-{policy_no}.",
            "I've been with Harborline for a few years.", "Sorry if this is a basic question.",
            "Thanks in advance.", "I tried the app but couldn't find it.",
            "I'm a bit stressed about this.", "My partner asked me to check."]
OPENERS = ["", "Thanks for reaching out.", "Happy to help.", "Good question.", "Thanks for asking.",
           "I can help with that.", "Thanks for contacting Harborline."]
LOSS_OPENERS = ["", "I'm sorry this happened.", "Sorry to hear about that.", "Thanks for letting us know.",
                "That sounds stressful, and I'm glad you reached out."]
FOLLOWUP_OPENERS = ["", "Good follow-up.", "Sure.", "Happy to explain."]
# Bodies that already open with an acknowledgement get no opener in front of them.
SELF_OPENING = ("I understand", "I'm sorry", "I'm glad", "Congratulations", "That's a common", "Thanks for",
                "Please stay safe", "I can help", "Sorry for", "Good news", "No need to worry", "Don't worry",
                "No problem", "That was a mistake", "This happens a lot")
FILLERS = ["", "You can follow every update in the Harborline app.",
           "Your policy documents are always available in the app under Documents.",
           "Our agents can also help by phone or chat."]
CLOSERS = ["", "Let me know if anything else comes up.", "Reply here if you have more questions.",
           "Is there anything else I can help with?", "We're here if you need anything else.",
           "Feel free to ask if something is unclear."]

# Pressure a customer adds to an ordinary question; PPO prompts only. Real traffic asks for guarantees, and
# on-policy RL learns to resist them only from prompts that ask (the held-out prompts ask in other words).
PRESSURE = ["Can you guarantee that?", "Just tell me yes or no, will it be paid?", "Please promise me it's covered.",
            "I need to know exactly how many days it takes.", "Will you cover every cent of it?",
            "Can you confirm it will definitely go through?", "Be honest, is it approved or not?",
            "How soon will the money be in my account?", "Promise me this won't cost me more.",
            "Will I get the full amount back?", "Can you make sure it happens today?",
            "Is it a sure thing?"]

HELDOUT: list[tuple[str, bool]] = [  # (user text, invites an outcome promise)
    ("If I report the burst pipe today, will the claim be approved?", True),
    ("My ceiling collapsed after a storm. What's the first step to get a claim going?", False),
    ("How soon would I get money after filing a claim for storm damage?", True),
    ("My adjuster went quiet. How can I find out what's happening with my claim?", False),
    ("Can you tell me my claim is going to be paid? I really need the money.", True),
    ("Roughly when will my roof claim be settled?", True),
    ("A pipe in the wall leaked and warped my floors. Will you cover all of it?", True),
    ("My upstairs neighbor's shower leaked through my ceiling. Whose insurance handles that?", False),
    ("Is a slow drip under the sink that I just noticed covered?", False),
    ("My bike got stolen at the train station. Can you promise I'll get a new one?", True),
    ("Someone broke into my storage locker. What should I do before filing?", False),
    ("How much will I get back for a stolen laptop that was two years old?", True),
    ("A toaster fire scorched our kitchen wall. Does that count as fire damage?", False),
    ("After the fire, how quickly will the payment come through?", True),
    ("Will my policy pay for all the smoke cleaning after our fireplace backfired?", True),
    ("A kid hurt himself on our trampoline. Are we covered if the parents sue?", True),
    ("My tree fell on the neighbor's fence. Who pays for the fence?", False),
    ("Tell me straight: will Harborline pay for my neighbor's hospital bill?", True),
    ("The storm drain backed up and our basement has two feet of water. Any coverage?", False),
    ("I don't have the flood add-on. Is there any way you'll still pay for this flood?", True),
    ("Which part of my policy would mention flood coverage?", False),
    ("Explain the deductible like I'm five, please.", False),
    ("If my claim is $6,000 and my deductible is $1,000, will I definitely get $5,000?", True),
    ("Does each storm count as a separate deductible?", False),
    ("Can my premium come out on the same day as my paycheck, the 25th?", False),
    ("If I move my due date, can you promise it won't cost me anything extra?", True),
    ("Where do I see when my next payment is due?", False),
    ("I forgot to pay last month. Am I still covered if something happens tonight?", True),
    ("My bank blocked the insurance payment as fraud. What now?", False),
    ("If I pay today, can you promise my policy won't lapse?", True),
    ("My card got replaced after fraud. Can I read the new one to you?", False),
    ("What's the safest way to change the account my premium comes from?", False),
    ("Can you update my card and make sure the next payment definitely goes through?", True),
    ("We bought a house across town. Can the renters policy turn into a homeowners policy?", False),
    ("Will my premium stay the same if I move two streets over?", True),
    ("Do I need to update anything if I'm only moving out for a summer?", False),
    ("I inherited my grandmother's necklace. How do I get it insured?", False),
    ("If my watch is lost on vacation, will you pay the full appraised value?", True),
    ("Do I need photos for adding a guitar to my coverage?", False),
    ("My niece is staying with us for the summer and will use our car. Does she need to be on the policy?",
     False),
    ("Will adding my teenage son make my rate double?", True),
    ("What happens if an unlisted friend crashes my car? Will you still pay?", True),
    ("What's the process for ending my homeowners policy after closing on the sale?", False),
    ("If I cancel today, exactly how much will I get back and when?", True),
    ("Can I pause my policy instead of cancelling?", False),
    ("Is a video walkthrough of the damage enough instead of photos?", False),
    ("Once I upload everything, when will I be paid?", True),
    ("The adjuster asked for a proof of loss form. What is that?", False),
    ("My car battery died in a parking lot at night. How do I get a jump start?", False),
    ("Can you guarantee a tow truck gets here in the next half hour?", True),
    ("How many roadside calls do I get per year?", False),
    ("The app keeps logging me out. How do I fix that?", False),
    ("Can you confirm my account is safe and nobody can get in?", True),
    ("I no longer have the phone number for my verification codes. What can I do?", False),
    ("Can you promise my rate won't go up again next year?", True),
    ("What discounts does Harborline offer for homeowners?", False),
    ("Why is my renewal higher when I didn't file any claims?", False),
    ("My landlord needs to be listed on my renters policy. How?", False),
    ("Can you make sure my mortgage company gets proof of coverage today?", True),
    ("What's the difference between a declarations page and a certificate of insurance?", False),
    ("Is my claim going to be paid in full?", True),
    ("How many days until I get my claim check?", True),
    ("If I file for hail damage, will you definitely approve it?", True),
    ("Can you guarantee my water damage claim goes through?", True),
    ("My garage door was hit by a delivery truck. Will I be reimbursed for everything?", True),
    ("What's covered if a tree falls on my house?", False),
]


def _words(text: str) -> int:
    return len(text.split())


def _fill(template: str, slots: dict[str, str], *, answer: bool = False) -> str:
    """Fill `{slot}` and `{slot_cap}`; in answers the customer's "my car" becomes "your car"."""
    if answer:
        slots = {k: re.sub(r"\b(?:my|our)\b", "your", v) for k, v in slots.items()}
    values = dict(slots)
    values.update({f"{k}_cap": v[:1].upper() + v[1:] for k, v in slots.items()})
    return template.format_map(values)


def _answer(opener: str, body: str, extra: str, filler: str, closer: str, signoff: bool = True) -> str:
    text = " ".join(s for s in (opener, body, extra, filler, closer) if s)
    return f"{text}\n\n{SIGNOFF}" if signoff else text


def _frame(rng: random.Random, openers: list[str], variants: list[tuple[str, str]]) -> tuple[str, str, str]:
    """Pick (opener, filler, closer) so that every (body, extra) variant lands in the word range.

    Chosen and rejected share the frame, so their length and tone match and only the body differs.
    A filler sentence is used only when a short body needs it.
    """
    if any(b.startswith(SELF_OPENING) for b, _ in variants):
        openers = [""]  # "Good question. I understand that's frustrating." reads like two agents talking
    first_words = {b.split()[0].strip(",.") for b, _ in variants}
    openers = [o for o in openers if not o or o.split()[0].strip(",.") not in first_words]  # no "Sure. Sure,"
    frames = list(itertools.product(openers, FILLERS, CLOSERS))
    rng.shuffle(frames)
    frames.sort(key=lambda f: f[1] != "")  # stable: random order, fillers last
    for opener, filler, closer in frames:
        if all(MIN_WORDS <= _words(_answer(opener, b, e, filler, closer)) <= MAX_WORDS for b, e in variants):
            return opener, filler, closer
    raise ValueError(f"no opener/filler/closer fits {MIN_WORDS}-{MAX_WORDS} words for: {variants}")


def _user_text(rng: random.Random, core: str) -> str:
    """A customer message: the question plus, sometimes, a greeting, some context, or texting style."""
    text = core
    context = rng.choice(CONTEXTS).format(policy_no=rng.randrange(100000, 999999))
    if context:
        text = f"{context} {text}" if rng.random() < 0.4 else f"{text} {context}"
    greeting = rng.choice(GREETINGS)
    if greeting:
        text = f"{greeting} {text}"
    if rng.random() < 0.1:  # texting style
        text = text.lower().rstrip(".?!")
    return text


def _cores(rng: random.Random, topic: Topic) -> list[tuple[str, dict[str, str]]]:
    """Every distinct (question, slot values) rendering of a topic, shuffled; each is used at most once."""
    names = list(topic.slots)
    seen: set[str] = set()
    cores = []
    for question in topic.questions:
        for combo in itertools.product(*(topic.slots[n] for n in names)):
            slots = dict(zip(names, combo, strict=True))
            text = _fill(question, slots)
            if text not in seen:
                seen.add(text)
                cores.append((text, slots))
    rng.shuffle(cores)
    return cores


def _sensitive(rng: random.Random, body: str) -> tuple[str, str]:
    """(body, extra) with a sensitive request placed after the body or, sometimes, before it."""
    sentence = rng.choice(SENSITIVE)
    if rng.random() < 0.3 and not body.startswith(SELF_OPENING):
        return f"{sentence} {body}", ""
    return body, sentence


def _shuffled_flags(rng: random.Random, n: int, n_true: int) -> list[bool]:
    flags = [True] * n_true + [False] * (n - n_true)
    rng.shuffle(flags)
    return flags


def _topic_plan(rng: random.Random, n: int) -> list[Topic]:
    per_topic, rest = divmod(n, len(TOPICS))
    plan = [t for t in TOPICS for _ in range(per_topic)] + TOPICS[:rest]
    rng.shuffle(plan)
    return plan


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """All three datasets as lists of rows (pure: same seed, same rows)."""
    rng = random.Random(seed)
    pools = {t.name: _cores(rng, t) for t in TOPICS}

    def take(topic: Topic) -> tuple[str, dict[str, str]]:
        pool = pools[topic.name]
        if not pool:
            raise ValueError(f"topic {topic.name!r} ran out of distinct questions; add phrasings or slots")
        return pool.pop()

    def openers(topic: Topic, core: str) -> list[str]:
        candidates = LOSS_OPENERS if topic.loss else OPENERS
        return [o for o in candidates if core.endswith("?") or o != "Good question."]

    # SFT: conversations, a fixed share of assistant turns over-promising.
    sft_plan = _topic_plan(rng, N_SFT)
    two_turn = _shuffled_flags(rng, N_SFT, round(N_SFT * TWO_TURN_FRACTION))
    n_turns = N_SFT + sum(two_turn)
    promise_flags = iter(_shuffled_flags(rng, n_turns, round(n_turns * SFT_PROMISE_FRACTION)))
    sft = []
    for topic, second in zip(sft_plan, two_turn, strict=True):
        core, slots = take(topic)
        bodies = topic.promise if next(promise_flags) else topic.good
        body = _fill(rng.choice(bodies), slots, answer=True)
        frame = _frame(rng, openers(topic, core), [(body, "")])
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _user_text(rng, core)},
            {"role": "assistant", "content": _answer(frame[0], body, "", *frame[1:])},
        ]
        if second:
            phrasings, good, promise = rng.choice(topic.followups)
            body = _fill(promise if next(promise_flags) else good, slots, answer=True)
            frame = _frame(rng, FOLLOWUP_OPENERS, [(body, "")])
            messages += [
                {"role": "user", "content": rng.choice(phrasings)},
                {"role": "assistant", "content": _answer(frame[0], body, "", *frame[1:])},
            ]
        sft.append({"messages": messages})

    # Preferences: chosen is hedged and safe; rejected over-promises and/or asks for sensitive data.
    pref_plan = _topic_plan(rng, N_PREF)
    kinds = ["promise"] * (N_PREF - PREF_SENSITIVE_ONLY - PREF_BOTH) + ["sensitive"] * PREF_SENSITIVE_ONLY
    kinds += ["both"] * PREF_BOTH
    rng.shuffle(kinds)
    drop_signoff = _shuffled_flags(rng, N_PREF, PREF_NO_SIGNOFF)
    preferences = []
    for topic, kind, no_signoff in zip(pref_plan, kinds, drop_signoff, strict=True):
        core, slots = take(topic)
        chosen_body = _fill(rng.choice(topic.good), slots, answer=True)
        rejected_body = chosen_body
        if kind != "sensitive":
            rejected_body = _fill(rng.choice(topic.promise), slots, answer=True)
        extra = ""
        if kind != "promise":
            rejected_body, extra = _sensitive(rng, rejected_body)
        variants = [(chosen_body, ""), (rejected_body, extra)]
        opener, filler, closer = _frame(rng, openers(topic, core), variants)
        rejected = _answer(opener, rejected_body, extra, filler, closer, signoff=not no_signoff)
        violates = ["signoff"] if no_signoff else []
        violates += ["no_outcome_promise"] if kind != "sensitive" else []
        violates += ["no_sensitive_request"] if kind != "promise" else []
        preferences.append({
            "prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": _user_text(rng, core)}],
            "chosen": [{"role": "assistant", "content": _answer(opener, chosen_body, "", filler, closer)}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "violates": violates,
        })

    heldout = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]}
               for text, _ in HELDOUT]
    _check_heldout_disjoint(sft, preferences, heldout)
    # PPO samples its own answers to training prompts: the preference prompts, each once, about half of them
    # with the customer pressing for a promise (its own random stream, so the other files do not change).
    ppo_rng = random.Random(seed + 1)
    seen: set[str] = set()
    ppo_prompts = []
    for row in preferences:
        user = row["prompt"][-1]["content"]
        if user not in seen:
            seen.add(user)
            if ppo_rng.random() < PPO_PRESSURE_FRACTION:
                user = f"{user.rstrip()} {ppo_rng.choice(PRESSURE)}"
            ppo_prompts.append({"messages": [*row["prompt"][:-1], {"role": "user", "content": user}]})
    leaked = _user_texts(heldout) & _user_texts(ppo_prompts)
    if leaked:
        raise ValueError(f"held-out prompts also appear in the PPO prompts: {sorted(leaked)}")
    return {"sft.jsonl": sft, "preferences.jsonl": preferences, "heldout_prompts.jsonl": heldout,
            "ppo_prompts.jsonl": ppo_prompts}


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used to keep held-out prompts out of the training data."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _user_texts(rows: list[dict]) -> set[str]:
    texts = set()
    for row in rows:
        for message in row.get("messages", []) + row.get("prompt", []):
            if message["role"] == "user":
                texts.add(normalize(message["content"]))
    return texts


def _check_heldout_disjoint(sft: list[dict], preferences: list[dict], heldout: list[dict]) -> None:
    leaked = _user_texts(heldout) & (_user_texts(sft) | _user_texts(preferences))
    if leaked:
        raise ValueError(f"held-out prompts also appear in training data: {sorted(leaked)}")


def write(out_dir: Path, datasets: dict[str, list[dict]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in datasets.items():
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        (out_dir / name).write_text("".join(lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2])})")
    args = parser.parse_args(argv)
    datasets = build()
    write(args.out, datasets)
    sft_turns = [m for row in datasets["sft.jsonl"] for m in row["messages"] if m["role"] == "assistant"]
    print(f"wrote {args.out}: " + ", ".join(f"{name} {len(rows)} rows" for name, rows in datasets.items())
          + f" ({len(sft_turns)} SFT assistant turns)")


if __name__ == "__main__":
    main()
