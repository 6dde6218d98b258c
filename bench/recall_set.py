"""The recall set of bench/memory_bench.py, generated in code from a seed: 20 callers of Tony, 30
conversations each over about nine months (voice, Slack, web chat), every conversation an episode
summary plus filler facts, with facts planted among them that 200 later questions need. Some facts are
corrected in a later conversation (stored superseding the original), some questions need two memories
from two conversations together. Questions are worded as a caller would ask, mostly not in the fact's words.

Also the filler of other callers that brings the store to 10,000 and 100,000 memories."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

CALLERS = 20
CONVERSATIONS = 30
DAYS_APART = 9  # a caller's conversations, oldest about nine months ago
QUESTIONS_EACH = 10  # of which IMPLIED_EACH need two memories and CORRECTED_EACH a correction
IMPLIED_EACH = 2
CORRECTED_EACH = 2
UNASKED_EACH = 4  # facts planted about a caller that no question asks for (near distractors)

Kind = Literal["single", "corrected", "implied"]


@dataclass(frozen=True)
class Memory:
    key: str  # unique in the set: "c03.deadline", "c03.deadline.fix", "c03.s12" (episode), "c03.f12.1" (filler)
    subject: str
    conversation: int
    days_ago: float  # when it was learnt (the store is backdated to it)
    content: str
    kind: str  # "fact" or "summary"
    layer: str  # "profile" or "episode"
    channel: str
    importance: float
    supersedes: str | None = None  # the key of the memory it corrects


@dataclass(frozen=True)
class Question:
    caller: int
    subject: str
    text: str
    kind: Kind
    family: str
    needs: tuple[tuple[str, ...], ...]  # memories it needs; each any one of its keys (a fact, or an episode saying it)
    stale: tuple[str, ...] = ()  # a corrected fact's old value: the superseded fact, the episode that said it


@dataclass
class RecallSet:
    memories: list[Memory] = field(default_factory=list)  # in the order they are stored
    questions: list[Question] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """A kind of fact worth remembering about a caller, in several wordings, and how a caller asks for it."""

    name: str
    values: tuple[str, ...]
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    topic: str  # an episode's mention of it without the value
    told: str  # and with it
    corrections: tuple[str, ...] = ()  # wordings of a later correction ({old}: the value it replaces)
    importance: float = 0.7


@dataclass(frozen=True)
class Pair:
    """A question that needs two facts told in two conversations, neither enough alone."""

    name: str
    values: tuple[str, ...]
    first: tuple[str, ...]  # carries the answer
    second: tuple[str, ...]  # makes it the answer
    questions: tuple[str, ...]
    topics: tuple[str, str]
    told: tuple[str, str]


GIRLS = ("Priya", "Sofia", "Amara", "Aiko", "Leila", "Hannah", "Zoe", "Chloe", "Nadia", "Ines", "Greta", "Maren")
BOYS = ("Mateo", "Liam", "Kofi", "Ravi", "Theo", "Jonah", "Felix", "Arjun", "Oscar", "Milo", "Tariq", "Eli")
PEOPLE = ("Dana Whitfield", "Marcus Chen", "Ruth Okafor", "Sanjay Patel", "Helen Brooks", "Tomasz Nowak",
          "Gloria Reyes", "Owen Gallagher", "Keiko Mori", "Bernard Mensah", "Lucia Ferraro", "Ivan Petrov")  # fmt: skip
PARTNERS = ("Sam", "Alex", "Jordan", "Robin", "Dev", "Maria", "Claire", "Luis", "Nina", "Ahmed", "Beth", "Kenji")
DOGS = ("Biscuit", "Juniper", "Moose", "Pepper", "Waffles", "Ziggy", "Otis", "Clementine", "Bruno", "Pickles")
BREEDS = ("beagle", "labrador", "dachshund", "border collie", "golden retriever", "corgi", "whippet", "pug")
CITIES = ("Lisbon", "Denver", "Tucson", "Montreal", "Edinburgh", "Osaka", "Austin", "Melbourne", "Seville",
          "Portland", "Nairobi", "Krakow", "Halifax", "Savannah", "Boise", "Reykjavik")  # fmt: skip
BAD_VENDORS = ("Brightline Logistics", "Apex Freight", "QuickHaul Couriers", "Harbor Print Co", "Vantage Staffing",
               "Metro Shine Cleaning", "Crestview Catering", "Bluepeak IT Services", "Summit Signage",
               "Redline Movers", "Ironclad Security", "Nimbus Telecom")  # fmt: skip
GOOD_VENDORS = ("Castillo Print", "Greenleaf Caterers", "Oakridge Movers", "Pixel & Pine Design", "Tidewater Florists",
                "Northstar Electric", "Keystone Plumbing", "Juniper Events", "Beacon Courier", "Lumen AV Hire",
                "Maple Street Bakery", "Clearwater Cleaning")  # fmt: skip
SUPPLIERS = ("Northfield Packaging", "Boxwell Supplies", "Cartonex", "Pack & Post Direct", "Ridgeway Containers",
             "Unibox Trading", "Fairmount Paper", "Kestrel Packaging")  # fmt: skip
COMPANIES = ("Redwood Dental", "Larkspur Realty", "Finch & Co Accountants", "Harbourside Hotel", "Copperleaf Cafe",
             "Stonegate Builders", "Brightwater School", "Ashford Veterinary", "Pinecrest Clinic",
             "Meridian Logistics", "Quill Legal", "Saltbox Studios")  # fmt: skip
PROJECTS = ("Henderson bid", "Riverside tender", "Q3 board pack", "grant application", "Alder Street lease renewal",
            "annual safety audit", "Kowalski contract", "spring catalogue", "insurance renewal",
            "city permit filing")  # fmt: skip
SPEND = ("office refit", "kitchen remodel", "website rebuild", "summer offsite", "van fleet upgrade",
         "holiday party", "new phone system", "warehouse shelving")  # fmt: skip
DATES = ("March 14", "April 2", "May 19", "June 6", "July 23", "August 8", "September 30", "October 17",
         "November 4", "December 12", "January 27", "February 20")  # fmt: skip
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")

FAMILIES = (
    Family(
        "daughter",
        GIRLS,
        (
            "The caller's daughter is named {v}; she just turned {age}.",
            "The caller has a {age}-year-old daughter called {v}.",
            "The caller's daughter {v} started piano lessons this term.",
        ),
        (
            "What's my little girl called again? I blanked on it earlier.",
            "You asked after my youngest last time. Do you remember what she's called?",
            "Remind me, what name did I give you for my girl?",
        ),
        "mentioned family news",
        "mentioned their daughter {v}",
        importance=0.8,
    ),
    Family(
        "son_sport",
        ("soccer", "swimming", "ice hockey", "basketball", "karate", "baseball", "lacrosse", "tennis"),
        (
            "The caller's son {son} plays {v} every weekend.",
            "The caller spends weekends driving their son {son} to {v} practice.",
        ),
        (
            "What's my boy into these days, sports-wise?",
            "Which sport is {son} doing at the moment?",
            "What keeps my lad busy at weekends now?",
        ),
        "talked about their son's weekends",
        "said {son} is doing {v} now",
        corrections=(
            "The caller's son {son} gave up {old} and has taken up {v} instead.",
            "Update: {son} no longer does {old}; the caller says he is all about {v} now.",
        ),
        importance=0.6,
    ),
    Family(
        "spouse",
        PARTNERS,
        ("The caller is married to {v}, who works as a {job}.", "The caller's partner is {v}, a {job}."),
        ("What's my other half's name again? You mentioned them once.", "Who did I tell you I'm married to?"),
        "talked about home life",
        "mentioned their partner {v}",
        importance=0.7,
    ),
    Family(
        "vendor_never",
        BAD_VENDORS,
        (
            "The caller will never use {v} again after they {incident}.",
            "The caller had a terrible experience with {v} ({incident}) and refuses to work with them.",
            "The caller blacklisted {v}: they {incident}.",
        ),
        (
            "What was the name of that vendor I said never to use again?",
            "Which company burned me so badly that I swore off them for good?",
            "Who was it that messed me around so much I said don't ever book them again?",
        ),
        "complained about a supplier that let them down",
        "complained about {v} and won't use them again",
        importance=0.8,
    ),
    Family(
        "vendor_like",
        GOOD_VENDORS,
        (
            "The caller is delighted with {v} and recommends them for {service}.",
            "The caller says {v} did a fantastic job on {service} and would hire them again.",
        ),
        (
            "Which outfit did I rave about a while back?",
            "Who did I say did a brilliant job for us?",
            "What was that firm I told you I'd happily hire again?",
        ),
        "praised a supplier they were pleased with",
        "praised {v}",
        importance=0.6,
    ),
    Family(
        "deadline",
        DATES,
        ("The {project} is due on {v}.", "The caller has to submit the {project} by {v}."),
        (
            "When do I have to get the {project} in?",
            "What's the cutoff for the {project} again?",
            "How long have I got on the {project}?",
        ),
        "went over the {project} timeline",
        "said the {project} is due {v}",
        corrections=(
            "The {project} deadline moved: it is now due on {v} instead of {old}.",
            "The caller said the {project} has been pushed back to {v}.",
        ),
        importance=0.9,
    ),
    Family(
        "coffee",
        (
            "a flat white with oat milk",
            "black coffee, no sugar",
            "a double espresso",
            "a large latte with two sugars",
            "green tea rather than coffee",
            "a cortado",
            "a decaf cappuccino",
        ),
        ("The caller takes their coffee as {v}.", "The caller's usual order at the cafe is {v}."),
        (
            "If you're ordering for the meeting, how do I take my morning cup?",
            "What should you get me when you do the cafe run?",
            "What's my usual drink order?",
        ),
        "talked about refreshments for a visit",
        "said their usual is {v}",
        corrections=(
            "The caller has switched their usual order to {v}.",
            "The caller is off {old} now and orders {v}.",
        ),
        importance=0.4,
    ),
    Family(
        "contact",
        ("a text message", "email", "a Slack DM", "a voicemail", "WhatsApp"),
        (
            "The caller prefers {v} over a phone call for anything non-urgent.",
            "For routine things the caller would rather get {v} than be rung.",
        ),
        ("What's the best way to get hold of me when it isn't urgent?", "How should you ping me about routine stuff?"),
        "talked about how best to keep in touch",
        "asked for {v} for routine updates",
        corrections=(
            "The caller now wants {v} for non-urgent things instead of {old}.",
            "Change of plan: the caller asked for {v} rather than {old} for routine updates.",
        ),
        importance=0.6,
    ),
    Family(
        "role",
        (
            "operations manager",
            "head of procurement",
            "office manager",
            "finance director",
            "practice manager",
            "facilities lead",
            "events coordinator",
        ),
        ("The caller is the {v} at {company}.", "The caller works at {company} as {v}."),
        (
            "What's my job title these days?",
            "If someone asks you what I do at work, what would you tell them?",
            "What position am I in now?",
        ),
        "talked about work",
        "mentioned their job as {v}",
        corrections=(
            "The caller was promoted to {v} at {company}.",
            "The caller has moved from {old} into the {v} role at {company}.",
        ),
        importance=0.7,
    ),
    Family(
        "tony_promise",
        (
            "the updated price sheet",
            "a quote for the conference booth",
            "three hotel options for the offsite",
            "the signed NDA",
            "a draft of the client newsletter",
            "samples of the new letterhead",
            "the floor plan for the new office",
        ),
        (
            "Tony promised to send the caller {v} by {day}.",
            "Tony said he would get {v} over to the caller before {day}.",
        ),
        (
            "What were you supposed to send me?",
            "Weren't you going to email me something this week? What was it?",
            "What did you say you'd get over to me?",
        ),
        "agreed next steps with Tony",
        "got a promise from Tony of {v}",
        importance=0.8,
    ),
    Family(
        "caller_promise",
        (
            "book the venue for the launch party",
            "send over the signed contract",
            "confirm the headcount for the dinner",
            "review the draft floor plan",
            "pay the deposit for the hall",
            "chase the landlord about the heating",
        ),
        ("The caller committed to {v} before {day}.", "The caller agreed to {v} by {day}."),
        ("What did I promise you I'd take care of?", "What was I meant to do on my end?"),
        "split the to-do list with Tony",
        "said they would {v}",
        importance=0.7,
    ),
    Family(
        "allergy",
        ("shellfish", "peanuts", "gluten", "dairy", "sesame", "tree nuts"),
        ("The caller is allergic to {v}.", "The caller can't eat {v}; it's a serious allergy."),
        (
            "We're ordering lunch for the team. Is there anything I can't have?",
            "What food do I need to stay away from?",
        ),
        "planned the catering for a team lunch",
        "mentioned their {v} allergy",
        importance=0.9,
    ),
    Family(
        "dog",
        DOGS,
        ("The caller has a {breed} called {v}.", "The caller's {breed}, {v}, is a real handful."),
        ("What's my dog's name? My niece asked and I froze.", "What did I tell you my pup is called?"),
        "swapped pet stories",
        "talked about {v} the {breed}",
        importance=0.5,
    ),
    Family(
        "budget",
        ("$18,500", "$25,000", "$40,000", "$60,000", "$75,000", "$12,000"),
        ("The caller's budget for the {spend} is {v}.", "The caller can spend up to {v} on the {spend}."),
        (
            "How much money do I have to play with on the {spend}?",
            "What spending limit did I give you for the {spend}?",
        ),
        "talked money for the {spend}",
        "set the {spend} budget at {v}",
        corrections=(
            "The caller's budget for the {spend} changed to {v}.",
            "The caller said the {spend} budget is now {v}, not {old}.",
        ),
        importance=0.8,
    ),
    Family(
        "seat",
        ("aisle", "window"),
        ("The caller always asks for the {v} seat and flies {airline} when they can.",),
        ("When you book my flights, where do I like to sit?",),
        "went over travel preferences",
        "asked for the {v} seat when flying",
        importance=0.5,
    ),
    Family(
        "birthday",
        DATES,
        ("The caller's birthday is on {v}.", "The caller turns {age2} on {v}."),
        ("What date should you put a reminder in for my big day?", "When am I a year older, do you remember?"),
        "talked about plans for a celebration",
        "said their birthday is {v}",
        importance=0.6,
    ),
    Family(
        "meetings",
        ("9:30", "10 am", "11 am", "noon"),
        (
            "The caller never takes meetings before {v}.",
            "The caller asked not to be booked into anything earlier than {v}.",
        ),
        ("What's the earliest you can put something in my calendar?", "How early in the day can you book me in?"),
        "talked about their calendar",
        "asked for nothing before {v}",
        corrections=(
            "The caller is fine with meetings from {v} now (it used to be {old}).",
            "The caller moved their earliest meeting time to {v}.",
        ),
        importance=0.6,
    ),
    Family(
        "football",
        ("the Giants", "Arsenal", "the Warriors", "the Mariners", "Celtic", "the Packers", "the Canucks"),
        ("The caller is a die-hard {v} fan.", "The caller never misses a match when {v} play."),
        ("Which club do I follow?", "Who do I cheer for on match day?"),
        "talked sport",
        "talked about {v}'s season",
        importance=0.4,
    ),
    Family(
        "car",
        ("a Subaru Outback", "a Tesla Model 3", "a Ford F-150", "a Honda Civic", "a Volvo XC60", "a Mini Cooper"),
        ("The caller drives {v}.", "The caller gets around in {v}."),
        ("What am I driving these days?", "What kind of wheels do I have now?"),
        "sorted out parking for a visit",
        "mentioned they drive {v}",
        corrections=("The caller traded in {old} for {v}.", "The caller has a new car: {v}, replacing {old}."),
        importance=0.4,
    ),
    Family(
        "hometown",
        CITIES,
        ("The caller grew up in {v}.", "The caller is originally from {v}."),
        ("Where am I from, originally?", "Which place did I say I was raised in?"),
        "reminisced about growing up",
        "talked about growing up in {v}",
        importance=0.5,
    ),
)

PAIRS = (
    Pair(
        "sister_trip",
        CITIES,
        ("The caller's sister {name} lives in {v}.", "The caller's sister moved to {v} last year."),
        (
            "The caller is going to visit their sister next month.",
            "The caller has booked time off next month to stay with their sister.",
        ),
        ("Which city am I travelling to next month?", "Where am I off to next month?"),
        ("talked about their sister", "talked about time off"),
        ("said their sister lives in {v}", "said they are visiting their sister next month"),
    ),
    Pair(
        "mother_holiday",
        CITIES,
        ("The caller's mother lives in {v}.", "The caller's mom retired to {v}."),
        (
            "The caller is spending Thanksgiving at their mother's this year.",
            "The caller will be with their mom over Thanksgiving.",
        ),
        ("Where am I headed for Thanksgiving?", "Which city will I be in over the Thanksgiving break?"),
        ("talked about their parents", "talked about holiday plans"),
        ("said their mother lives in {v}", "said they will spend Thanksgiving with their mother"),
    ),
    Pair(
        "accountant",
        PEOPLE,
        ("The caller's accountant is {v}.", "{v} does the caller's books."),
        (
            "The caller has to get their receipts to the accountant by {date}.",
            "The caller's accountant needs the expense receipts by {date}.",
        ),
        ("Who am I supposed to send my receipts to?", "Whose desk do my receipts need to land on?"),
        ("talked about bookkeeping", "talked about tax season"),
        ("said {v} does their books", "said the receipts are due to the accountant by {date}"),
    ),
    Pair(
        "supplier_price",
        SUPPLIERS,
        ("{v} supplies all of the caller's packaging.", "The caller buys their boxes and mailers from {v}."),
        (
            "The caller's packaging supplier put its prices up {n}% this quarter.",
            "The caller is annoyed that their packaging supplier raised prices by {n}%.",
        ),
        ("Which company just hiked its prices on me?", "Who was it that put their prices up on me?"),
        ("talked about suppliers", "talked about rising costs"),
        ("said {v} supplies their packaging", "said the packaging supplier raised prices {n}%"),
    ),
    Pair(
        "partner_leave",
        PEOPLE,
        ("The caller's business partner is {v}.", "The caller co-owns the business with {v}."),
        (
            "The caller's business partner starts parental leave in {month}.",
            "The caller will be covering for their business partner, who is on parental leave from {month}.",
        ),
        ("Who is going to be out on leave in {month}?", "Who am I covering for from {month}?"),
        ("talked about how the business is run", "talked about staffing cover"),
        ("said they run the business with {v}", "said their business partner is on leave from {month}"),
    ),
    Pair(
        "son_team",
        ("Eastside Eagles", "Riverside Rovers", "Harbor Hawks", "Northgate Comets", "Westfield Wolves"),
        ("The caller's son {son} plays for the {v}.", "The caller's son {son} made the {v} squad this season."),
        (
            "The caller can't do Saturday mornings because of their son's games.",
            "Saturday mornings are off limits for the caller: their son has matches.",
        ),
        ("Which team's games eat up my Saturday mornings?", "Whose matches am I stuck at every Saturday?"),
        ("talked about their son", "talked about weekend availability"),
        ("said {son} plays for the {v}", "said Saturday mornings are taken by their son's games"),
    ),
    Pair(
        "dentist",
        ("Okafor", "Lindqvist", "Ramirez", "Haddad", "Nakamura", "Brennan", "Kowalczyk"),
        ("The caller's dentist is Dr. {v}.", "The caller has been seeing Dr. {v} for their teeth for years."),
        (
            "The caller has a root canal booked with their dentist on {date2}.",
            "The caller's dentist is doing a crown for them on {date2}.",
        ),
        ("Who's doing my procedure on {date2}?", "Which doctor am I seeing on {date2}?"),
        ("talked about their health", "talked about their diary"),
        ("said Dr. {v} is their dentist", "mentioned a dental appointment on {date2}"),
    ),
)

FILLERS = (
    "The caller is repainting the office kitchen {colour}.",
    "The caller's team has grown to {n} people.",
    "The caller has been training for a half marathon.",
    "The caller is learning Spanish on their commute.",
    "The caller thinks the new invoicing portal is confusing.",
    "The caller's printer keeps jamming on double-sided jobs.",
    "The caller is thinking about switching banks.",
    "The caller's niece {girl} is getting married in {month}.",
    "The caller's brother works in {city}.",
    "The caller used {good} for the {event} and it went fine.",
    "The caller's neighbour has a {breed} that barks all night.",
    "The caller's nephew {boy} plays {sport} at school.",
    "The caller's colleague {person} handles payroll.",
    "The caller went to {city} for a conference in {month}.",
    "The caller wants the monthly report as a PDF, not a spreadsheet.",
    "The caller mentioned their building's lift is out of order again.",
    "The caller had a quote from {bad} for the {event} but went elsewhere.",
    "The caller's office is closed on the {n}th for a public holiday.",
    "The caller is trying to cut down on sugar.",
    "The caller likes to keep calls short on Mondays.",
    "The caller's friend {person} recommended a good Thai place near the office.",
    "The caller is reading a biography of {famous}.",
    "The caller's old supplier used to be {supplier}, years ago.",
    "The caller has a standing call with {company} every {day}.",
    "The caller found the last parking arrangement at the venue confusing.",
    "The caller's cousin is a {job} in {city}.",
    "The caller asked for invoices to go to the accounts inbox.",
    "The caller is planning a garden party in {month}.",
)
INCIDENTS = ("lost two pallets of stock", "double-billed them for a month", "no-showed on the install day",
             "damaged the lobby floor", "sent the wrong banners to an event",
             "ignored three complaint emails")  # fmt: skip
SERVICES = ("the office move", "the event catering", "the new signage", "the rewiring", "the brochure printing",
            "the reception flowers")  # fmt: skip
JOBS = ("nurse", "draughtsman", "teacher", "software engineer", "chef", "pharmacist", "paramedic", "lawyer")
AIRLINES = ("Alaska Airlines", "Delta", "United", "JetBlue", "Air Canada")
COLOURS = ("sage green", "navy", "off-white", "terracotta", "pale yellow")
EVENTS = ("retirement lunch", "open day", "charity quiz", "product launch", "staff away day")
SPORTS = ("rugby", "chess", "badminton", "cricket", "volleyball")
FAMOUS = ("Ada Lovelace", "Winston Churchill", "Marie Curie", "Nelson Mandela", "Steve Jobs")

PURPOSES = (
    "wanted a quote for 500 branded tote bags",
    "checked on invoice #{n}{n}",
    "moved the site walkthrough to {day}",
    "needed help drafting a reply to an unhappy client",
    "asked for restaurant ideas for a team dinner",
    "asked about opening hours over the holidays",
    "wanted a colleague added to the account",
    "asked for a refund of a duplicate charge",
    "booked the meeting room for {day}",
    "chased the delivery window for the new chairs",
    "renewed the parking permits",
    "asked for a summary of last quarter's orders",
    "wanted to change the billing address",
    "asked for help planning a client visit",
    "checked whether the new brochures had shipped",
    "asked how to reset the portal password",
    "wanted advice on a tricky email from a landlord",
    "confirmed the numbers for the {event}",
    "asked for three options for a team gift",
    "reported the card reader at reception playing up",
    "asked for the wifi details for visitors",
    "wanted to pause the weekly fruit delivery",
    "asked what was still outstanding on their account",
    "wanted a reminder set for the quarterly review",
    "asked about upgrading their plan",
)
OPENINGS = {
    "voice": ("The caller rang and {p}.", "On a short call, the caller {p}.", "The caller phoned in; they {p}."),
    "slack": ("Over Slack, the caller {p}.", "In a Slack thread the caller {p}.",
              "The caller messaged on Slack and {p}."),
    "chat": ("In the web chat, the caller {p}.", "The caller wrote in through the chat and {p}."),
}  # fmt: skip
CLOSINGS = ("Tony said he would follow up on {day}.", "Nothing else outstanding.", "They ended on a friendly note.",
            "Tony will check back next week.", "No follow-up needed.")  # fmt: skip
OPENERS = ("", "", "", "Hey Tony, quick one: ", "Sorry, silly question. ", "Before I forget: ", "Hi again. ")


def _caller_id(rng: random.Random, n: int) -> str:
    if n % 10 < 7:
        return f"+1415555{rng.randrange(10_000):04d}"
    return "slack:U0" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(9))


def _channel(rng: random.Random, subject: str) -> str:
    if subject.startswith("slack:"):
        return rng.choices(("slack", "chat"), (4, 1))[0]
    return rng.choices(("voice", "chat"), (7, 3))[0]


def _slots(rng: random.Random) -> dict[str, str]:
    """One caller's particulars: the names and things the fact wordings refer to."""
    return {
        "son": rng.choice(BOYS), "name": rng.choice(GIRLS), "company": rng.choice(COMPANIES),
        "project": rng.choice(PROJECTS), "spend": rng.choice(SPEND), "breed": rng.choice(BREEDS),
        "job": rng.choice(JOBS), "airline": rng.choice(AIRLINES), "incident": rng.choice(INCIDENTS),
        "service": rng.choice(SERVICES), "age": str(rng.randrange(4, 15)), "age2": str(rng.randrange(30, 61)),
        "day": rng.choice(DAYS), "date": rng.choice(DATES), "date2": rng.choice(DATES),
        "month": rng.choice(MONTHS), "n": str(rng.randrange(6, 19)),
    }  # fmt: skip


def _fill(rng: random.Random, template: str, slots: dict[str, str]) -> str:
    extra = {
        "colour": rng.choice(COLOURS), "girl": rng.choice(GIRLS), "boy": rng.choice(BOYS), "city": rng.choice(CITIES),
        "good": rng.choice(GOOD_VENDORS), "bad": rng.choice(BAD_VENDORS), "event": rng.choice(EVENTS),
        "person": rng.choice(PEOPLE), "sport": rng.choice(SPORTS), "famous": rng.choice(FAMOUS),
        "supplier": rng.choice(SUPPLIERS), "month": rng.choice(MONTHS), "day": rng.choice(DAYS),
        "company": rng.choice(COMPANIES), "job": rng.choice(JOBS), "breed": rng.choice(BREEDS),
        "n": str(rng.randrange(3, 40)),
    }  # fmt: skip
    return template.format(**{**extra, **slots})


def _ask(rng: random.Random, template: str, slots: dict[str, str]) -> str:
    return rng.choice(OPENERS) + template.format(**slots)


@dataclass
class _Conversation:
    channel: str
    asides: list[str] = field(default_factory=list)  # the episode's mentions of the facts told
    facts: list[tuple[str, str, float, str | None]] = field(default_factory=list)  # key, text, importance, supersedes


def build(seed: int = 16) -> RecallSet:
    """The whole set, the same for the same seed."""
    rng = random.Random(seed)
    out = RecallSet()
    for c in range(CALLERS):
        _caller(rng, c, out)
    return out


def _caller(rng: random.Random, c: int, out: RecallSet) -> None:
    subject = _caller_id(rng, c)
    slots = _slots(rng)
    conversations = [_Conversation(_channel(rng, subject)) for _ in range(CONVERSATIONS)]
    correctable = [f for f in FAMILIES if f.corrections]
    corrected = rng.sample(correctable, CORRECTED_EACH)
    rest = [f for f in FAMILIES if f not in corrected]
    singles = rng.sample(rest, QUESTIONS_EACH - IMPLIED_EACH - CORRECTED_EACH + UNASKED_EACH)
    asked, unasked = singles[: QUESTIONS_EACH - IMPLIED_EACH - CORRECTED_EACH], singles[len(singles) - UNASKED_EACH :]
    pairs = rng.sample(PAIRS, IMPLIED_EACH)
    told: dict[str, str] = {}  # fact key -> the episode key that states its value too
    plans: list[tuple[str, Question]] = []  # the fact a question is planned on (a corrected one: the original)

    def plant(key: str, text: str, importance: float, at: int, mention: tuple[str, str], supersedes: str | None = None):
        conversation = conversations[at]
        conversation.facts.append((key, text, importance, supersedes))
        says = rng.random() < 0.5  # an episode says the value itself half the time, else only the topic
        conversation.asides.append(mention[1] if says else mention[0])
        if says:
            told[key] = f"c{c:02d}.s{at:02d}"

    for family in asked + unasked + corrected:
        value = rng.choice(family.values)
        key = f"c{c:02d}.{family.name}"
        at = rng.randrange(0, 20 if family in corrected else CONVERSATIONS - 2)
        fill = {**slots, "v": value}
        mention = (family.topic.format(**fill), family.told.format(**fill))
        plant(key, rng.choice(family.facts).format(**fill), family.importance, at, mention)
        needed = key
        if family in corrected:
            new = rng.choice([v for v in family.values if v != value])
            fill = {**slots, "v": new, "old": value}
            later = rng.randrange(at + 3, CONVERSATIONS)
            needed = key + ".fix"
            mention = (family.topic.format(**fill), family.told.format(**fill))
            plant(needed, rng.choice(family.corrections).format(**fill), family.importance, later, mention, key)
        if family in unasked:
            continue
        kind: Kind = "corrected" if family in corrected else "single"
        question = Question(c, subject, _ask(rng, rng.choice(family.questions), slots), kind, family.name, ((needed,),))
        plans.append((key, question))
    for pair in pairs:
        value = rng.choice(pair.values)
        fill = {**slots, "v": value}
        first = rng.randrange(0, CONVERSATIONS - 6)
        second = rng.randrange(first + 1, CONVERSATIONS)
        keys = (f"c{c:02d}.{pair.name}.a", f"c{c:02d}.{pair.name}.b")
        for key, wordings, at, topic, said in zip(
            keys, (pair.first, pair.second), (first, second), pair.topics, pair.told, strict=True
        ):
            plant(key, rng.choice(wordings).format(**fill), 0.7, at, (topic.format(**fill), said.format(**fill)))
        question = Question(
            c, subject, _ask(rng, rng.choice(pair.questions), slots), "implied", pair.name, (keys[:1], keys[1:])
        )
        plans.append((keys[0], question))
    # the memories in the order a caller's conversations make them: each conversation's episode, then its facts
    for at, conversation in enumerate(conversations):
        days_ago = (CONVERSATIONS - at) * DAYS_APART - rng.uniform(0, DAYS_APART * 0.8)
        purpose = _fill(rng, rng.choice(PURPOSES), {})
        summary = [rng.choice(OPENINGS[conversation.channel]).format(p=purpose)]
        summary += [f"They also {aside}." for aside in conversation.asides]
        summary.append(_fill(rng, rng.choice(CLOSINGS), {}))
        out.memories.append(Memory(f"c{c:02d}.s{at:02d}", subject, at, days_ago, " ".join(summary), "summary",
                                   "episode", conversation.channel, 0.5))  # fmt: skip
        for key, text, importance, supersedes in conversation.facts:
            out.memories.append(Memory(key, subject, at, days_ago, text, "fact", "profile", conversation.channel,
                                       importance, supersedes))  # fmt: skip
        for n in range(rng.choice((0, 1, 1, 2))):
            text = _fill(rng, rng.choice(FILLERS), {})
            out.memories.append(Memory(f"c{c:02d}.f{at:02d}.{n}", subject, at, days_ago, text, "fact", "profile",
                                       conversation.channel, round(rng.uniform(0.3, 0.5), 2)))  # fmt: skip
    for key, question in plans:
        needs = tuple(tuple(k for k in (slot[0], told.get(slot[0])) if k) for slot in question.needs)
        stale = tuple(k for k in (key, told.get(key)) if k) if question.kind == "corrected" else ()
        out.questions.append(
            Question(question.caller, question.subject, question.text, question.kind, question.family, needs, stale)
        )


def filler_texts(count: int, seed: int = 61) -> list[tuple[str, str]]:
    """`count` distinct (text, kind) memories of the kinds troupe keeps about callers (facts, episode
    summaries), recombined from the templates above, for other callers."""
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    wordings: list[tuple[str, tuple[str, ...]]] = [(w, ("",)) for w in FILLERS]
    wordings += [(w, f.values) for f in FAMILIES for w in f.facts + f.corrections]
    wordings += [(w, p.values) for p in PAIRS for w in p.first + p.second]
    while len(seen) < count:
        slots = _slots(rng)
        if rng.random() < 0.4:
            channel = rng.choice(tuple(OPENINGS))
            purpose = _fill(rng, rng.choice(PURPOSES), {})
            text = rng.choice(OPENINGS[channel]).format(p=purpose) + " " + _fill(rng, rng.choice(CLOSINGS), {})
            seen.setdefault(text, "summary")
        else:
            wording, values = rng.choice(wordings)
            slots["v"], slots["old"] = rng.choice(values), rng.choice(values)
            seen.setdefault(_fill(rng, wording, slots), "fact")
    return list(seen.items())


def filler_subjects(rng: random.Random) -> Iterator[tuple[str, int]]:
    """Other callers, each with the number of memories they have (50 to 100), without end."""
    n = 0
    while True:
        n += 1
        subject = f"+1206{rng.randrange(10**7):07d}" if n % 3 else f"slack:U1{n:08d}"
        yield subject, rng.randrange(50, 101)
