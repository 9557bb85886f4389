"""The nouns of a prompt, as a part-of-speech tagger would find them, without a tagger model.

Each word gets a class from a small lexicon of the words that are not nouns (determiners,
numbers, prepositions and conjunctions, common verbs and adjectives) and from its form;
every other word is a noun. Context then settles the forms that can be either: a
participle or a third-person verb right after a noun is a verb ('a dog sleeping on a
sofa', 'a dog chases a cat'), before a noun it is an adjective ('a sleeping dog'); a
colour or a material before a noun modifies it ('an orange cat'), alone it is the noun
('an orange'). A subject is the last run of nouns of each phrase ('a brown teddy bear'
gives 'teddy bear'); phrases end at prepositions, conjunctions, verbs and punctuation. The
colours, materials and adjectives of a phrase before its subject modify it ('brown' ->
'teddy bear'). Prompts written as tag lists keep their quality, style and camera tags
('best quality', 'highly detailed', '8k', '35mm', 'depth of field') out: a comma-separated
tag made only of such words has no subject, nor have LoRA tags ('<lora:name:0.8>'),
embedding names and BREAK.
"""
import re

DETERMINER, NUMBER, BREAK, VERB, ADJECTIVE, MODIFIER, OTHER, NOUN = (
    "determiner", "number", "break", "verb", "adjective", "modifier", "other", "noun")
PARTICIPLE, VERB_FORM = "participle", "verb form"     # settled by context: a verb's -ing/-ed, bare or -s form


def _set(text: str) -> frozenset:
    return frozenset(text.split())


DETERMINERS = _set("a an the this that these those some any my your his her its our their each every another "
                   "many several few no both all")
NUMBERS = _set("one two three four five six seven eight nine ten eleven twelve twenty hundred dozen couple pair")
CONNECTORS = _set("and or but nor with of on in at by under over beside besides behind near next to inside above "
                  "below from between into onto for while against through along around like without across "
                  "among amid atop beneath underneath toward towards upon within outside past after before "
                  "during as than then where who which whose whom")
AUXILIARIES = _set("is are was were be been being has have had do does did can could will would may might "
                   "there it they he she we i you them him")
# Words that are never the subject: what the picture is, and how it is rendered.
NON_SUBJECTS = _set("photo photograph photography still picture image painting drawing illustration render "
                    "rendering sketch close up closeup portrait style view shot scene highly detailed very realistic "
                    "photorealistic 4k 8k hd "
                    "uhd high quality resolution masterpiece artwork art front top middle center centre distance "
                    "background foreground")
# Quality, style, camera and resolution tags: a comma-separated tag made only of these (and
# connectors) is no phrase. Some are nouns elsewhere ('a lighthouse in a field').
STYLE_TAGS = _set("best worst quality ultra super extremely insanely intricate detail details detailed hyperdetailed "
                  "hyper hyperrealistic realism photorealism absurdres highres hires lowres resolution hdr uhd fhd "
                  "dslr raw bokeh dof depth field focus sharp soft cinematic lighting light lit volumetric studio "
                  "octane unreal engine render rendered artstation trending pixiv deviantart concept award winning "
                  "professional official wallpaper score film grain analog lens shallow wide angle macro "
                  "dramatic ambient rim natural golden hour epic stunning amazing perfect solo low life landscape "
                  "product national geographic")
UNITS = _set("k mm cm px p fps d x hz mp")      # '8k', '35mm', '1080p', '3d': a number's unit is no subject
COLOURS = _set("red green blue yellow orange purple pink brown black white grey gray silver gold golden violet "
               "beige turquoise teal cyan magenta maroon navy crimson scarlet ivory cream tan olive lime indigo")
MATERIALS = _set("glass stone wooden wood metal plastic paper leather wool woolen cotton silk brick marble steel "
                 "iron copper bronze crystal ceramic porcelain clay concrete rubber velvet denim straw ice "
                 "chocolate cardboard bamboo")
ADJECTIVES = _set(
    "big small large tiny huge giant little tall short long wide narrow thick thin fat slim round square flat "
    "old young new ancient modern antique vintage retro futuristic old-fashioned "
    "beautiful pretty cute ugly lovely adorable handsome elegant gorgeous majestic magnificent cool "
    "happy sad angry calm quiet loud brave proud shy lazy sleepy hungry tired curious friendly fierce wild "
    "funny silly crazy scary spooky creepy cozy cosy fancy plain simple strange weird odd "
    "hot cold warm wet dry clean dirty muddy dusty rusty shiny glossy matte bright dark pale "
    "vivid colorful colourful transparent translucent sparkling glowing "
    "soft hard smooth rough fluffy furry hairy fuzzy shaggy spiky sticky sharp blunt curly wavy straight "
    "sunny snowy rainy cloudy foggy misty stormy windy sandy rocky grassy leafy icy starry "
    "heavy empty full open closed broken frozen fresh ripe rotten juicy spicy tasty sweet sour delicious "
    "rich poor busy lonely famous real fake magic magical mystical mysterious enchanted haunted "
    "tropical arctic urban rural medieval gothic victorian japanese chinese french italian mexican "
    "american indian african european english lush dense vast steep serene peaceful")
VERBS = _set(
    "sit stand run walk eat drink hold wear ride fly swim play read look jump sleep lie lay chase carry sing "
    "dance climb watch catch throw kick push pull cook paint draw write drive park dock float hang lean rest "
    "perch graze roll fight hug kiss feed pet cross fill cover surround rise shine glow burn melt grow bloom "
    "stare wait hide chew lick bark roar smile laugh cry talk sail row fish hunt dig build stack pile wrap "
    "tie serve pour bake slice cut hit bite sniff smell touch reach point wave fall sink land leap crawl "
    "sneak peek gaze face overlook lead follow guard protect attack bring take give make use open close "
    "break place put set fix clean wash brush comb hop skip skate ski surf drift soar hover circle "
    "pose relax lounge nap bask race")
# Third-person forms of these are also common nouns: a verb only when an object follows.
NOUN_VERBS = _set("watch fly bear park dock ride play paint drink walk dance kiss hug rest cross fight cook "
                  "light wave point face guard race circle fish land set cover fall roll pile stack tie wrap cut "
                  "lead bite hop leap nap pose")
IRREGULAR_PARTICIPLES = _set("sat stood ran ate drank held wore rode flew swam lain slept drove sang hung caught "
                             "threw thrown flown eaten ridden driven worn fought built grown dug fed brought "
                             "took taken gave given made bit bitten fell fallen sank sunk leapt")
# Nouns whose endings look like a verb's or an adverb's.
NOUN_FORMS = _set(
    "ring king wing thing string swing spring ceiling building earring pudding wedding clothing sling "
    "sibling duckling dumpling seedling stocking icing frosting bowling evening morning lightning awning "
    "bed shed sled seed weed steed reed bobsled sledge hundred "
    "lily fly butterfly dragonfly firefly jelly belly family holly bully ally rally trolley "
    "bus glass grass dress class moss cross boss compass chess walrus cactus octopus hippopotamus "
    "lotus circus iris virus bonus canvas gas lens")
ADJECTIVE_SUFFIXES = ("ous", "ful", "ive", "able", "ible", "less", "ish", "ic", "esque")
NOUN_EXCEPTIONS = _set("music picnic mosaic comic attic clinic garlic plastic magic panic traffic topic arctic "
                       "relic tunic olive")


def _key(word: str) -> str:
    return re.sub(r"[^\w-]", "", word.lower())


def _verb_stem(key: str) -> str | None:
    """The verb a bare or third-person form belongs to ('chases' -> 'chase'), if a known one."""
    for suffix, back in (("", ""), ("ies", "y"), ("es", ""), ("s", "")):
        if key.endswith(suffix) and (stem := key[:len(key) - len(suffix)] + back) in VERBS:
            return stem
    return None


def word_class(word: str) -> str:
    """The class a word has whatever its neighbours (participles and verb forms still open)."""
    key = _key(word)
    if not key or not re.search(r"[a-z0-9]", key) or key == "break":
        return BREAK
    if key in DETERMINERS:
        return DETERMINER
    if key in NUMBERS or key.isdigit():
        return NUMBER
    if key in CONNECTORS:
        return BREAK
    if key in AUXILIARIES:
        return VERB
    if key in NON_SUBJECTS or key in UNITS or len(key) == 1:     # CLIP splits '4k' into '4' and 'k'
        return OTHER
    if (number := re.fullmatch(r"\d+([a-z]+)", key)) and number[1] in UNITS or \
            re.match(r"(score|source|rating)_", key):       # '8k', '35mm'; Pony's 'score_9', 'rating_safe'
        return OTHER
    if key in COLOURS or key in MATERIALS:
        return MODIFIER
    if key in ADJECTIVES:
        return ADJECTIVE
    if key in NOUN_FORMS:
        return NOUN
    if key in IRREGULAR_PARTICIPLES or (len(key) > 4 and (key.endswith("ing") or key.endswith("ed"))):
        return PARTICIPLE
    if key.endswith("ly") and len(key) > 4:
        return OTHER
    if _verb_stem(key):
        return VERB_FORM
    if key.endswith(ADJECTIVE_SUFFIXES) and len(key) > 5 and key not in NOUN_EXCEPTIONS:
        return ADJECTIVE
    return NOUN


def _tag_words(words: list[str], classes: list[str]) -> list[str]:
    """The classes with every word of a LoRA tag ('<lora:name:0.8>'), of an embedding's name
    ('embedding:name') and of a comma-separated quality or style tag made OTHER."""
    classes, inside, segment = list(classes), False, []
    for i, word in enumerate(words + [","]):
        key = _key(word)
        if word == "<" or inside:
            inside = word != ">"
            classes[i:i + 1] = [OTHER] if i < len(words) else []
            continue
        if key == "embedding" and i + 2 < len(words) and words[i + 1] == ":":
            classes[i] = classes[i + 2] = OTHER
        if word in (",", ";", ".", "|") or key == "break":
            if segment and all(_key(words[j]) in STYLE_TAGS | NON_SUBJECTS | CONNECTORS or classes[j] == OTHER
                               or classes[j] == NUMBER and not _key(words[j]).isalpha() for j in segment):
                for j in segment:
                    classes[j] = OTHER
            segment = []
        elif classes[i] != BREAK or key in CONNECTORS:
            segment.append(i)
    return classes


def tag(words: list[str]) -> list[str]:
    """One class per word, participles and verb forms settled by their neighbours."""
    classes = _tag_words(words, [word_class(w) for w in words])
    for i, cls in enumerate(classes):
        before = classes[i - 1] if i else BREAK
        after = classes[i + 1] if i + 1 < len(classes) else BREAK
        if cls == PARTICIPLE:
            prenominal = before != NOUN and after in (NOUN, MODIFIER, ADJECTIVE, PARTICIPLE)
            alone = before in (DETERMINER, ADJECTIVE, NUMBER, MODIFIER) and after in (BREAK, OTHER)
            classes[i] = ADJECTIVE if prenominal else NOUN if alone else VERB
        elif cls == VERB_FORM:
            # After a noun: a verb when an object follows, or when nothing does and the word
            # is no common noun ('a fox jumps over a log', not 'traffic lights on a street').
            key = _key(words[i])
            objects = (DETERMINER, NUMBER, ADJECTIVE, MODIFIER, NOUN, OTHER, PARTICIPLE)
            ends = after == BREAK and key != _verb_stem(key) and _verb_stem(key) not in NOUN_VERBS
            classes[i] = VERB if before == NOUN and (after in objects or ends) else NOUN
    return classes


def noun_phrases(words: list[str]) -> list[tuple[tuple[int, int], list[int]]]:
    """((start, stop), modifiers) of each phrase: its subject's word indices (its last run of
    nouns; with no noun, a colour or material that ends it, or an adjective that ends a phrase
    opened by a determiner or a number) and the indices of the
    colours, materials and adjectives before that run in the phrase."""
    classes = tag(words) + [BREAK]
    phrases, run, last, lone, described, determined = [], None, None, None, [], False
    for i, cls in enumerate(classes):
        if cls in (BREAK, VERB):
            found = last or lone
            if found:
                phrases.append((found, [m for m in described if m < found[0]]))
            run = last = lone = None
            described = []
        elif cls == NOUN:
            if not (run and run[1] == i):       # a new run: what described an earlier one is not its
                described = [m for m in described if not run or m > run[0]]
                run = (i, i + 1)
            else:
                run = (run[0], i + 1)
            last = run
        elif cls in (MODIFIER, ADJECTIVE) and classes[i + 1] in (BREAK, VERB) and (cls == MODIFIER or determined):
            lone = (i, i + 1)        # 'an orange', 'a blue square': the phrase's last word is its noun
        elif cls in (MODIFIER, ADJECTIVE):
            described.append(i)
        determined = cls in (DETERMINER, NUMBER) or determined and cls not in (BREAK, VERB)
    return phrases


def noun_spans(words: list[str]) -> list[tuple[int, int]]:
    """(start, stop) word indices of each phrase's subject."""
    return [span for span, _ in noun_phrases(words)]
